#!/usr/bin/env bash
# Builds Floodgate and runs it on config/examples/quickstart.yaml in front of the bundled demo
# upstream: traffic on 127.0.0.1:8080, metrics on 127.0.0.1:9090, the app on 127.0.0.1:3000.
# Ctrl-C stops both. Installs cmake first if the machine lacks it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need cmake cmake
# A debug build: quick to make, and plenty fast for trying it out (bench/ measures release).
cargo build --bins
./target/debug/floodgate validate config/examples/quickstart.yaml
./target/debug/floodgate-demo-upstream --listen 127.0.0.1:3000 &
up=$!
trap 'kill $up 2>/dev/null' EXIT
cat <<'MSG'

Floodgate is starting. In another terminal try:
  curl -i http://127.0.0.1:8080/api/hello          # proxied to the demo app
  curl -i -d 'some body' http://127.0.0.1:8080/echo  # echoed back, see the echo-* headers
  curl -s http://127.0.0.1:9090/metrics | grep http_requests_total
  curl -s http://127.0.0.1:9090/status             # queue, breaker, load indicators
  for i in $(seq 50); do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:8080/sleep/500 & done; wait
      # 8 at a time reach the app, the rest queue; those still waiting after 2 s get 503
  # edit config/examples/quickstart.yaml and save: the change is live within a second

MSG
./target/debug/floodgate --config config/examples/quickstart.yaml

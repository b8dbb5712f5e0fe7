#!/usr/bin/env bash
# The demo: builds Floodgate (debug) if needed, then runs the sidecar in front of the bundled
# demo app with a limit to hit by hand, two features that degrade (one to a static fallback,
# one to a cached one), a queue, a circuit breaker and the admin plane, and prints what to try
# in another terminal. Ctrl-C stops everything it started. Installs cmake and curl first if the
# machine lacks them.
#
# Its files go to an ignored working folder (.demo/ by default): floodgate.yaml, copied from
# scripts/demo.yaml with the ports and folder filled in (edit that copy while the demo runs;
# a copy you had edited is kept as floodgate.yaml.bak when the next start rewrites it), the
# operator token floodgatectl reads (operator.token) and the audit log.
#
# Defaults, and the environment variables that change them:
#   FLOODGATE_DEMO_PORT=8080          the sidecar (your requests)
#   FLOODGATE_DEMO_METRICS_PORT=9090  /metrics, /status, /readyz
#   FLOODGATE_DEMO_ADMIN_PORT=9901    the admin plane (floodgatectl)
#   FLOODGATE_DEMO_APP_PORT=3000      the demo app
#   FLOODGATE_DEMO_DIR=.demo          the working folder
#   FLOODGATE_DEMO_BIN=               a folder holding floodgate, floodgatectl and
#                                     floodgate-demo-upstream already built (no cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. scripts/lib.sh

port=${FLOODGATE_DEMO_PORT:-8080}
metrics_port=${FLOODGATE_DEMO_METRICS_PORT:-9090}
admin_port=${FLOODGATE_DEMO_ADMIN_PORT:-9901}
app_port=${FLOODGATE_DEMO_APP_PORT:-3000}
for p in "$port" "$metrics_port" "$admin_port" "$app_port"; do
  if ! [[ $p =~ ^[0-9]+$ ]] || [ "$p" -lt 1 ] || [ "$p" -gt 65535 ]; then
    echo "!! port '$p' is not a number from 1 to 65535 (see FLOODGATE_DEMO_*_PORT)" >&2
    exit 2
  fi
done

need curl curl
if [ -n "${FLOODGATE_DEMO_BIN:-}" ]; then
  bin=$(cd "$FLOODGATE_DEMO_BIN" && pwd)
else
  need cmake cmake
  # A debug build: quick to make, and plenty fast for trying it out (bench/ measures release).
  cargo build --bins
  bin=$root/target/debug
fi
for b in floodgate floodgatectl floodgate-demo-upstream; do
  [ -x "$bin/$b" ] || { echo "!! $bin/$b is missing" >&2; exit 1; }
done

mkdir -p "${FLOODGATE_DEMO_DIR:-.demo}"
dir=$(cd "${FLOODGATE_DEMO_DIR:-.demo}" && pwd)
token=$dir/operator.token
if [ ! -s "$token" ]; then
  (umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$token")
fi

# The working copy: the template with this run's ports and folder.
sed_dir=$(printf '%s' "$dir" | sed 's/[\\|&]/\\&/g')
config=$dir/floodgate.yaml
sed -e "s|127\.0\.0\.1:8080|127.0.0.1:$port|" \
  -e "s|127\.0\.0\.1:9090|127.0.0.1:$metrics_port|" \
  -e "s|127\.0\.0\.1:9901|127.0.0.1:$admin_port|" \
  -e "s|127\.0\.0\.1:3000|127.0.0.1:$app_port|" \
  -e "s|\.demo/|$sed_dir/|g" \
  scripts/demo.yaml >"$config.new"
if [ -f "$config" ] && ! cmp -s "$config" "$config.new"; then
  mv "$config" "$config.bak"
  echo ">> $config differed from scripts/demo.yaml (edited, or other ports): kept as $config.bak" >&2
fi
mv "$config.new" "$config"
"$bin/floodgate" validate "$config" >/dev/null

pids=()
stop() {
  trap - EXIT INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$bin/floodgate-demo-upstream" --listen "127.0.0.1:$app_port" &
pids+=($!)
# The file's addresses are the ones in force: no FLOODGATE_LISTEN & co. from this shell.
env -u FLOODGATE_LISTEN -u FLOODGATE_UPSTREAM -u FLOODGATE_METRICS_LISTEN -u FLOODGATE_ADMIN_LISTEN \
  "$bin/floodgate" --config "$config" &
pids+=($!)

deadline=$((SECONDS + 30))
until "$bin/floodgate" health --addr "127.0.0.1:$metrics_port" >/dev/null 2>&1 &&
  (: <"/dev/tcp/127.0.0.1/$app_port") 2>/dev/null; do
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "!! the demo stopped before it was ready: see the error above (a port in use? set FLOODGATE_DEMO_*_PORT)" >&2
      exit 1
    fi
  done
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "!! the demo was not ready within 30 s" >&2
    exit 1
  fi
  sleep 0.1
done

u=http://127.0.0.1:$port
addr=""
[ "$admin_port" = 9901 ] || addr=" FLOODGATE_ADDR=127.0.0.1:$admin_port"  # floodgatectl's default
cat <<MSG

Floodgate demo ready: the sidecar on 127.0.0.1:$port in front of the demo app on 127.0.0.1:$app_port,
metrics and /status on 127.0.0.1:$metrics_port, the admin plane on 127.0.0.1:$admin_port.
Config: $config (edit and save: live within a second). Ctrl-C stops the demo.

In another terminal:

  # A request passes; RateLimit says what is left of 10 requests per 10 s (per client, on /api):
  curl -i $u/api/hello
  # A burst: the rest of the 10 pass, then 429; one more shows the refusal (Retry-After,
  # RateLimit-Policy, RateLimit, X-RateLimit-*, floodgate-reason: rate_limited, problem+json):
  for i in \$(seq 15); do curl -s -o /dev/null -w '%{http_code} ' $u/api/hello; done; echo
  curl -i $u/api/hello

  # The admin plane (the operator token was written by demo.sh):
  export PATH="$bin:\$PATH" FLOODGATE_TOKEN_FILE="$token"$addr
  floodgatectl status
  # The runbook's "increase rate limits": x2 for 10 minutes (see status; undo: limits restore --all):
  floodgatectl limits scale --all --multiplier 2 --ttl 10m --reason demo

  # Degradation, static fallback: the feature off, the sidecar answers 200 [] without the app:
  floodgatectl feature disable recommendations
  curl -i $u/api/recommendations
  # Cached fallback: an answer seen while the feature was on is served again, with an age header;
  # a query never seen gets 503:
  curl -s '$u/api/search?q=shoes'
  floodgatectl feature disable search
  curl -i '$u/api/search?q=shoes'
  curl -i '$u/api/search?q=hats'
  # Both back (the level decides again); or turn both off at once: degrade set degraded --ttl 10m
  floodgatectl feature reset recommendations && floodgatectl feature reset search

  # The queue: 4 at a time reach the app, 10 more wait up to 2 s (503 queue_timeout after),
  # the rest get 503 queue_full at once:
  for i in \$(seq 20); do curl -s -o /dev/null -w '%{http_code} ' '$u/slow?ms=3000' & done; wait; echo

  # The circuit breaker: /fail answers 500; after 5 in a row the sidecar answers 503
  # circuit_open for 10 s, on every route, without calling the app:
  for i in \$(seq 6); do curl -s -o /dev/null -w '%{http_code} ' $u/fail; done; echo
  curl -i $u/
  floodgatectl breakers

  curl -s http://127.0.0.1:$metrics_port/metrics | grep -E '^(http_requests_total|floodgate_shed_total)'
  curl -s http://127.0.0.1:$metrics_port/status

Floodgate's log (one line per request) follows.
MSG

# Until Ctrl-C, or until one of the two stops by itself.
wait -n "${pids[@]}"

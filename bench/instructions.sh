#!/usr/bin/env bash
# Instructions per request under callgrind (the steady measure; see bench/README.md).
# Installs valgrind, nginx and redis-server (Debian) if missing, builds release, runs
# bench/instructions.py.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need cmake cmake
need valgrind valgrind
need nginx nginx-light
need redis-server redis-server
need redis-benchmark redis-tools
cargo build --release --bins
exec python3 bench/instructions.py "$@"

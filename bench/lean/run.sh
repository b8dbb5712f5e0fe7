#!/usr/bin/env bash
# CPU per request of the lean floor's modes beside nginx proxy_pass, in one run (bench/peers.py
# with --extra), then, with --count, their instructions per request under callgrind
# (bench/lean/count.py). See bench/lean/README.md. Extra arguments go to peers.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh
need cmake cmake
need wrk wrk
need nginx nginx-light
need taskset util-linux
count=""
if [ "${1:-}" = "--count" ]; then count=1; shift; need valgrind valgrind; fi
# The project's lock file, so the floor builds the same pingora the proxy does.
[ -f bench/lean/Cargo.lock ] || cp Cargo.lock bench/lean/Cargo.lock
cargo build --release --manifest-path bench/lean/Cargo.toml
bin=${CARGO_TARGET_DIR:-bench/lean/target}/release/lean
modes=${LEAN_MODES:-proxy s0 s1 s2 s3 r0 r1}
extra=()
for m in $modes; do extra+=(--extra "lean $m=$bin $m 127.0.0.1:{port} 127.0.0.1:{backend}"); done
python3 bench/peers.py --peers nginx --plain --idle 0 --out bench/results/lean.md "${extra[@]}" "$@"
if [ -n "$count" ]; then
  python3 bench/lean/count.py "$bin" --modes "$(echo $modes | tr ' ' ,)"
fi

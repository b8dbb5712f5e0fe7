#!/usr/bin/env bash
# Instructions per response that adding the rate-limit fields costs inside pingora-http, apart
# from the proxy (proxy/examples/header_floor.rs): each variant is counted under callgrind at
# two sizes and the difference divided, so start-up is not in the figure. Installs valgrind
# (Debian) if missing; writes bench/results/header_floor.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need valgrind valgrind
cargo build --release --example header_floor -p floodgate
bin=target/release/examples/header_floor
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
count() {
    valgrind --tool=callgrind --callgrind-out-file="$tmp/cg" "$bin" "$1" "$2" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
out=bench/results/header_floor.md
{
    echo "# bench/header_floor.sh, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "callgrind; (instructions for 12,000 responses - for 2,000) / 10,000."
    echo
    echo "| variant | instructions per response | over none |"
    echo "|---|---:|---:|"
    base=
    for v in none one-static five-static two-floodgate five-floodgate; do
        a=$(count "$v" 2000)
        b=$(count "$v" 12000)
        per=$(((b - a) / 10000))
        base=${base:-$per}
        echo "| $v | $per | $((per - base)) |"
    done
} | tee "$out"
echo "written to $out"

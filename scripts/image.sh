#!/usr/bin/env bash
# Builds Floodgate's container image with no base image: target/image/floodgate.oci.tar, an
# OCI archive. Stages target/image/stage (deploy/image/Containerfile and rootfs/: the stripped
# release binaries, the shared libraries `ldd` lists for them, /etc from deploy/image/etc, /tmp)
# and builds that Containerfile on it with buildah, in a storage of its own that is removed
# afterwards (vfs: no overlay mounts needed; chroot isolation: the Containerfile has no RUN).
#
# Usage: scripts/image.sh [--stage-only]
#   --stage-only  stop after staging (no buildah needed) and print the `docker build` (same
#                 files and config) and `buildah bud` (same digest) commands for the stage.
# Environment: FLOODGATE_IMAGE  the image's name (default ghcr.io/floodgate/floodgate:VERSION,
#                               the image `floodgatectl inject` writes by default);
#              FLOODGATE_SOURCE its org.opencontainers.image.source label (default: the git
#                               remote `origin` if it is https, else the repository the
#                               name implies).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

stage_only=false
case "${1:-}" in
  "") ;;
  --stage-only) stage_only=true ;;
  *) echo "usage: scripts/image.sh [--stage-only]" >&2; exit 2 ;;
esac

need strip binutils
need ldd libc-bin
$stage_only || need buildah buildah

cargo build --release --locked -p floodgate --bin floodgate -p floodgate-admin --bin floodgatectl

out=target/image
stage=$out/stage
root=$stage/rootfs
rm -rf "$stage"
mkdir -p "$root/usr/local/bin" "$root/tmp"
chmod 1777 "$root/tmp"
cp deploy/image/Containerfile "$stage/Containerfile"
cp -R deploy/image/etc "$root/etc"
chmod 0644 "$root"/etc/*

# The binaries, stripped, and every library `ldd` names (the loader at its PT_INTERP path),
# copied from where it resolves to; vdso is the kernel's.
for bin in floodgate floodgatectl; do
  strip --strip-all -o "$root/usr/local/bin/$bin" "target/release/$bin"
  if ldd "target/release/$bin" | grep -q 'not found'; then
    echo "!! $bin links a library that is not installed:" >&2
    ldd "target/release/$bin" >&2
    exit 1
  fi
  ldd "target/release/$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
    while read -r lib; do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
      chmod 0755 "$root$lib"
    done
done

version=$("$root/usr/local/bin/floodgate" --version | awk '{ print $2 }')
revision=$(git rev-parse HEAD)
git diff --quiet HEAD -- || revision="$revision-dirty"
image=${FLOODGATE_IMAGE:-ghcr.io/floodgate/floodgate:$version}
origin=$(git remote get-url origin 2>/dev/null || true)
if [ -n "${FLOODGATE_SOURCE:-}" ]; then
  source_url=$FLOODGATE_SOURCE
elif [[ $origin == https://* ]]; then
  source_url=${origin%.git}
else
  # A clone of a local path or over ssh has no address to publish: ghcr.io/OWNER/NAME links
  # to the repository github.com/OWNER/NAME through this label.
  repo=${image#*/}
  source_url="https://github.com/${repo%%:*}"
fi
# File times and the image's creation time are the commit's, so the same commit and staged
# tree give the same image digest.
epoch=$(git log -1 --format=%ct)

echo ">> staged $stage: $(du -sb "$root" | cut -f1) bytes"
ls -l "$root/usr/local/bin"
if $stage_only; then
  args="--build-arg VERSION=$version --build-arg REVISION=$revision --build-arg SOURCE=$source_url"
  echo ">> build it with: docker build -f $stage/Containerfile $args -t $image $stage"
  echo ">> or, the same digest as this script's: buildah bud --timestamp $epoch -f $stage/Containerfile $args -t $image $stage"
  exit 0
fi

store=$(mktemp -d "$PWD/$out/buildah.XXXXXX")
trap 'rm -rf "$store"' EXIT
bah() { buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs "$@"; }
export BUILDAH_ISOLATION=chroot

bah bud --quiet --timestamp "$epoch" -f "$stage/Containerfile" \
  --build-arg VERSION="$version" --build-arg REVISION="$revision" --build-arg SOURCE="$source_url" \
  -t "$image" "$stage" >/dev/null
rm -f "$out/floodgate.oci.tar"
bah push --quiet "$image" "oci-archive:$out/floodgate.oci.tar:$image"

# The layer's size uncompressed is what a node unpacks; the archive holds it gzipped.
layer=$(python3 - "$out/floodgate.oci.tar" <<'PY'
import gzip, json, sys, tarfile
t = tarfile.open(sys.argv[1])
blob = lambda d: t.extractfile("blobs/sha256/" + d.split(":")[1]).read()
manifest = json.loads(blob(json.loads(t.extractfile("index.json").read())["manifests"][0]["digest"]))
print(sum(len(gzip.decompress(blob(l["digest"]))) for l in manifest["layers"]))
PY
)
echo ">> $out/floodgate.oci.tar: $image ($revision)"
echo ">> archive $(stat -c %s "$out/floodgate.oci.tar") bytes; layer uncompressed $layer bytes"

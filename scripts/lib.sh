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

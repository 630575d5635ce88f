#!/usr/bin/env bash
# Idempotent machine + venv setup for `make test` / `make demo`.
# Each step checks first and only does slow work when something is missing,
# so a second run takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus: `ambientctl up --observability`; chromium: the dashboard's browser test.
APT_PACKAGES=(python3-bpfcc bpfcc-tools libbpfcc linux-headers-amd64 iproute2 curl wrk
              openssl tcpdump socat procps kmod nftables prometheus chromium)
VENV=.venv
PY=${PYTHON:-python3}
STAMPS=.setup-stamps
mkdir -p "$STAMPS"

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: must run as root (installs apt packages, mounts bpffs, creates network namespaces)" >&2
  exit 1
fi

# 1. apt packages, only those missing.
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Kernel headers for bcc when the running kernel has none: point
#    /lib/modules/$(uname -r)/{build,source} at Debian's -amd64 and -common trees.
kdir=/lib/modules/$(uname -r)
if [ ! -e "$kdir/build/include/linux/kconfig.h" ] && [ ! -e "$kdir/build/Makefile" ]; then
  amd64=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  if [ -n "$amd64" ] && [ -n "$common" ]; then
    log "wiring kernel headers for bcc: $kdir/build -> $amd64"
    mkdir -p "$kdir"
    ln -sfn "$amd64" "$kdir/build"
    ln -sfn "$common" "$kdir/source"
  else
    echo "setup: no linux-headers-*-amd64 tree under /usr/src; install linux-headers-amd64" >&2
    exit 1
  fi
fi

# 3. bpffs, needed for pinning programs, maps and links.
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  log "mounting bpffs on /sys/fs/bpf"
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
fi

# 4. venv that sees Debian's bcc module (only that package, not all of dist-packages).
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -e "$site/bcc" ]; then
  ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
fi

# 5. The project, editable, with dev extras; redone only when pyproject.toml changes.
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMPS/pip" 2>/dev/null)" != "$want" ]; then
  log "installing the project and its dev dependencies into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e '.[dev]'
  echo "$want" > "$STAMPS/pip"
fi

# 6. Generated protobuf/gRPC modules, rebuilt when a .proto is newer.
if ls mesh/api/*.proto >/dev/null 2>&1; then
  for proto in mesh/api/*.proto; do
    out="${proto%.proto}_pb2.py"
    if [ ! -e "$out" ] || [ "$proto" -nt "$out" ]; then
      log "generating code for $proto"
      PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/python" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. \
        --mypy_out=. --mypy_grpc_out=. "$proto"
    fi
  done
fi

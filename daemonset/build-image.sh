#!/usr/bin/env bash
# `make image`: build the node image (ambient-mesh:dev) with Debian's docker.io engine.
#
# No registry is needed: the base is a debootstrap'd bookworm imported with
# `docker import` (cached as ambient-base:bookworm), the build context is the git
# checkout's tracked files only. If no Docker daemon answers, one is started by hand
# (`dockerd --bridge=none --iptables=false`, builds use --network host) and stopped
# again at the end. Afterwards `ambientctl check` runs inside the image.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
image="${IMAGE:-ambient-mesh:dev}"
base="${BASE_IMAGE:-ambient-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
work="$(mktemp -d /tmp/ambient-image.XXXXXX)"
started_dockerd=""

cleanup() {
  rm -rf "$work"
  if [[ -n "$started_dockerd" ]]; then
    kill "$started_dockerd" 2>/dev/null || true
    wait "$started_dockerd" 2>/dev/null || true
  fi
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { echo "missing $1: apt-get install $2" >&2; exit 1; }; }
need docker docker.io
need dockerd docker.io

if ! docker info >/dev/null 2>&1; then
  echo "==> starting dockerd (log: $work/dockerd.log)"
  dockerd --bridge=none --iptables=false >"$work/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { cat "$work/dockerd.log" >&2; exit 1; }
fi

if ! docker image inspect "$base" >/dev/null 2>&1; then
  need debootstrap debootstrap
  echo "==> debootstrap bookworm (minbase) from $mirror"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" \
    >"$work/rootfs/etc/apt/sources.list"
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  echo "==> docker import as $base"
  tar -C "$work/rootfs" -c . | docker import - "$base" >/dev/null
fi

echo "==> build context: tracked files of $root"
mkdir "$work/context"
(cd "$root" && git ls-files -z | tar --null -T - -c) | tar -C "$work/context" -x
# pip inside the build must trust what pip trusts here (a TLS-intercepting proxy's CA).
ca="${PIP_CERT:-$(pip3 config get global.cert 2>/dev/null || true)}"
if [[ -n "$ca" && -s "$ca" ]]; then cp "$ca" "$work/context/.build-ca.pem"; fi

echo "==> docker build $image"
start=$(date +%s)
docker build --network host --build-arg "BASE=$base" -f "$work/context/daemonset/Dockerfile" \
  -t "$image" "$work/context"
echo "    built in $(( $(date +%s) - start ))s"

echo "==> ambientctl check inside $image"
# Privileged when the engine allows it (on a real node it does); inside a sandbox that
# forbids it, unprivileged: bpf(2), bpffs and netns checks then fail for that reason.
check=(docker run --rm --network none --user 0
       -e BCC_KERNEL_SOURCE=/opt/ambient/kernel-headers)
if ! "${check[@]}" --privileged -v /sys/fs/bpf:/sys/fs/bpf "$image" true 2>/dev/null; then
  echo "    (this engine cannot run privileged containers: checking unprivileged)"
else
  check+=(--privileged -v /sys/fs/bpf:/sys/fs/bpf)
fi
"${check[@]}" "$image" ambientctl check || echo "    (check reported problems: see above)"

size=$(docker image inspect -f '{{.Size}}' "$image")
echo "==> $image: $(( size / 1024 / 1024 )) MiB"

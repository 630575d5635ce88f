#!/usr/bin/env bash
# ambient-mesh on kind: `daemonset/kind.sh up` creates the cluster, builds the image,
# loads it into the nodes, installs Gateway API CRDs (if a file is given) and our base,
# and waits for the rollout with progress; `daemonset/kind.sh down` deletes it all.
#
#   CLUSTER=ambient            kind cluster name
#   IMAGE=ambient-mesh:dev     image tag (the manifests use ambient-mesh:dev)
#   GATEWAY_API_CRDS=FILE      gateway-api standard-install.yaml to apply first
#   TIMEOUT=300                seconds to wait for each rollout
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cluster="${CLUSTER:-ambient}"
image="${IMAGE:-ambient-mesh:dev}"
timeout="${TIMEOUT:-300}"

need() { command -v "$1" >/dev/null || { echo "kind.sh needs $1 on PATH ($2)" >&2; exit 1; }; }
step() { printf '\n==> %s\n' "$*"; }

wait_rollout() {  # kind name: progress every 5 s until rolled out or timeout
  local kind=$1 name=$2 start=$SECONDS
  until kubectl -n ambient-system rollout status "$kind/$name" --timeout=5s >/dev/null 2>&1; do
    if (( SECONDS - start > timeout )); then
      echo "    $kind/$name not ready after ${timeout}s:" >&2
      kubectl -n ambient-system get pods -o wide >&2
      kubectl -n ambient-system describe "$kind/$name" | tail -20 >&2
      exit 1
    fi
    printf '    %-32s %s (%ss)\n' "$kind/$name" \
      "$(kubectl -n ambient-system get "$kind/$name" --no-headers 2>/dev/null | tr -s ' ')" \
      "$(( SECONDS - start ))"
  done
  echo "    $kind/$name rolled out in $(( SECONDS - start ))s"
}

up() {
  need kind "https://kind.sigs.k8s.io"
  need kubectl "apt-get install kubernetes-client, or the upstream binary"
  need docker "apt-get install docker.io"
  if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    step "kind cluster $cluster exists: reusing it"
  else
    step "creating kind cluster $cluster"
    kind create cluster --name "$cluster" --config "$here/kind-config.yaml" --wait 120s
  fi
  kubectl config use-context "kind-$cluster" >/dev/null
  step "building $image"
  IMAGE="$image" bash "$here/build-image.sh"
  step "loading $image into the nodes"
  kind load docker-image "$image" --name "$cluster"
  step "mounting bpffs on every node"
  for node in $(kind get nodes --name "$cluster"); do
    docker exec "$node" sh -c 'mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf'
  done
  if [[ -n "${GATEWAY_API_CRDS:-}" ]]; then
    step "Gateway API CRDs from $GATEWAY_API_CRDS"
    kubectl apply --server-side -f "$GATEWAY_API_CRDS"
  fi
  step "applying daemonset/base"
  "$root/.venv/bin/ambientctl" install --base "$here/base" | kubectl apply --server-side -f -
  step "waiting for the rollout"
  wait_rollout deployment ambient-controller
  wait_rollout daemonset ambient-nodeagent
  step "status"
  "$root/.venv/bin/ambientctl" install --status "${KUBECONFIG:-$HOME/.kube/config}" || true
  echo
  echo "Opt a namespace in:  kubectl annotate namespace default ambientmesh.io/dataplane-mode=ambient"
}

down() {
  need kind "https://kind.sigs.k8s.io"
  step "deleting kind cluster $cluster"
  kind delete cluster --name "$cluster"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac

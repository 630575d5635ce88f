#!/usr/bin/env bash
# Security scan of the Kubernetes manifests with checkov, offline (--skip-download).
# checkov pins packages the project's venv cannot take, so it gets a venv of its own
# inside .venv/ (ignored by git). `--install-only` just makes that venv.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv/tools-checkov"
if [[ ! -x "$venv/bin/checkov" ]]; then
  echo "installing checkov into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "checkov>=3.2"
fi
[[ "${1:-}" == "--install-only" ]] && exit 0
BC_SKIP_MAPPING=TRUE exec "$venv/bin/checkov" -d "$root/daemonset/base" \
  --framework kubernetes --skip-download --compact "$@"

"""`ambientctl install`: render the Kubernetes manifests (kustomize base in daemonset/)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import yaml

from ambientctl.errors import AmbientctlError


def default_base() -> Path:
    """daemonset/base next to the project (source checkout or editable install)."""
    return Path(__file__).resolve().parents[2] / "daemonset" / "base"


def render_base(base: Path, seen: set[Path] | None = None) -> list[dict[str, Any]]:
    """A minimal kustomize: `resources` (files and nested bases) and `namespace`. Used
    when no `kubectl`/`kustomize` binary is installed."""
    seen = seen if seen is not None else set()
    if base in seen:
        raise AmbientctlError(f"kustomization cycle through {base}")
    seen.add(base)
    kfile = next((base / n for n in ("kustomization.yaml", "kustomization.yml", "Kustomization")
                  if (base / n).exists()), None)
    if kfile is None:
        raise AmbientctlError(f"{base} has no kustomization.yaml",
                              "give the kustomize base with --base DIR")
    spec = yaml.safe_load(kfile.read_text()) or {}
    docs: list[dict[str, Any]] = []
    for res in spec.get("resources") or []:
        path = (base / res).resolve()
        if path.is_dir():
            docs.extend(render_base(path, seen))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))
    namespace = spec.get("namespace")
    if namespace:
        for d in docs:
            if d.get("kind") not in ("Namespace", "CustomResourceDefinition", "ClusterRole",
                                     "ClusterRoleBinding"):
                d.setdefault("metadata", {})["namespace"] = namespace
    return docs


@click.command("install")
@click.option("--base", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Kustomize base (default: daemonset/base of this project).")
def command(base: Path | None) -> None:
    """Render the Kubernetes manifests of ambient-mesh (CRDs, RBAC, controller,
    node agent DaemonSet) to stdout, for `kubectl apply -f -`.

    Uses `kubectl kustomize` or `kustomize build` when installed, else renders the
    base's resources itself.

    \b
    Examples:
      ambientctl install | kubectl apply -f -
      ambientctl install > ambient-mesh.yaml
    """
    base = base or default_base()
    if not base.is_dir():
        raise AmbientctlError(f"no kustomize base at {base}", "give one with --base DIR")
    for tool in (["kubectl", "kustomize"], ["kustomize", "build"]):
        if shutil.which(tool[0]):
            out = subprocess.run([*tool, str(base)], capture_output=True, text=True)
            if out.returncode != 0:
                raise AmbientctlError(f"`{' '.join(tool)}` failed: {out.stderr.strip()}")
            click.echo(out.stdout, nl=False)
            return
    click.echo(yaml.safe_dump_all(render_base(base), sort_keys=False), nl=False)

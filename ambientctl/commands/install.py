"""`ambientctl install`: render the Kubernetes manifests (kustomize base in daemonset/)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import yaml

from ambientctl.errors import AmbientctlError
from ambientctl.output import emit

SYSTEM_NAMESPACE = "ambient-system"
DATAPLANE_MODE = "ambientmesh.io/dataplane-mode"


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


async def gather_cluster(kubeconfig: Path, namespace: str = SYSTEM_NAMESPACE) -> dict[str, Any]:
    """What `status --kubeconfig` reports, read from the API server: the controller
    Deployment and node agent DaemonSet rollouts, each agent pod, the CA Secret,
    enrolled namespaces and the waypoints' Deployments."""
    from kubernetes_asyncio import client as kclient

    from mesh.kube.client import api_client

    try:
        client = await api_client(kubeconfig)
    except Exception as e:
        raise AmbientctlError(f"cannot load kubeconfig {kubeconfig}: {e}") from None
    async with client as api:
        apps, core = kclient.AppsV1Api(api), kclient.CoreV1Api(api)
        custom = kclient.CustomObjectsApi(api)

        async def read(call: Any, *args: Any) -> dict[str, Any] | None:
            """Raw JSON (no client models: they refuse objects from newer servers)."""
            resp = await call(*args, _preload_content=False)
            body = await resp.read()
            resp.release()
            if resp.status == 404:
                return None
            if not 200 <= resp.status <= 299:
                raise AmbientctlError(f"the API server answered {resp.status} {resp.reason}",
                                      "check the RBAC of the kubeconfig's user")
            return json.loads(body)

        try:
            controller = await read(apps.read_namespaced_deployment, "ambient-controller",
                                    namespace)
        except Exception as e:
            if isinstance(e, AmbientctlError):
                raise
            raise AmbientctlError(f"cannot reach the API server in {kubeconfig}: {e}",
                                  "check the kubeconfig and that the cluster runs") from None
        agents = await read(apps.read_namespaced_daemon_set, "ambient-nodeagent", namespace)
        pods = await read(core.list_namespaced_pod, namespace)
        secret = await read(core.read_namespaced_secret, "ambient-ca", namespace)
        namespaces = await read(core.list_namespace) or {"items": []}
        gateways = await read(custom.list_cluster_custom_object,
                              "gateway.networking.k8s.io", "v1", "gateways")
        waypoints = []
        for gw in (gateways or {}).get("items", []):
            if (gw.get("spec") or {}).get("gatewayClassName") != "ambient-waypoint":
                continue
            meta = gw["metadata"]
            dep = await read(apps.read_namespaced_deployment, meta["name"], meta["namespace"])
            waypoints.append({"name": f"{meta['namespace']}/{meta['name']}",
                              "ready": _rollout(dep)[0], "detail": _rollout(dep)[1]})
    enrolled = sorted(n["metadata"]["name"] for n in namespaces.get("items", [])
                      if DATAPLANE_MODE in ((n["metadata"].get("annotations") or {}) |
                                            (n["metadata"].get("labels") or {}))
                      and ((n["metadata"].get("annotations") or {}) |
                           (n["metadata"].get("labels") or {}))[DATAPLANE_MODE] == "ambient")
    agent_pods = [{"name": p["metadata"]["name"], "node": (p.get("spec") or {}).get("nodeName"),
                   "phase": (p.get("status") or {}).get("phase"),
                   "ready": any(c.get("type") == "Ready" and c.get("status") == "True"
                                for c in (p.get("status") or {}).get("conditions") or [])}
                  for p in (pods or {}).get("items", [])
                  if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/name")
                  == "ambient-nodeagent"]
    c_ok, c_detail = _rollout(controller)
    a_ok, a_detail = _daemonset(agents)
    checks = [
        {"name": "controller", "ok": c_ok, "detail": c_detail},
        {"name": "node agents", "ok": a_ok, "detail": a_detail},
        {"name": "CA root", "ok": secret is not None,
         "detail": f"Secret {namespace}/ambient-ca" + (" present" if secret else " missing")},
        *({"name": f"waypoint {w['name']}", "ok": w["ready"], "detail": w["detail"]}
          for w in waypoints),
    ]
    return {"healthy": all(c["ok"] for c in checks), "checks": checks,
            "nodeAgents": agent_pods, "enrolledNamespaces": enrolled, "waypoints": waypoints}


def _rollout(dep: dict[str, Any] | None) -> tuple[bool, str]:
    if dep is None:
        return False, "not installed (ambientctl install | kubectl apply -f -)"
    want = (dep.get("spec") or {}).get("replicas", 1)
    st = dep.get("status") or {}
    ready, updated = st.get("readyReplicas") or 0, st.get("updatedReplicas") or 0
    return ready >= want and updated >= want, f"{ready}/{want} ready, {updated} up to date"


def _daemonset(ds: dict[str, Any] | None) -> tuple[bool, str]:
    if ds is None:
        return False, "not installed (ambientctl install | kubectl apply -f -)"
    st = ds.get("status") or {}
    want, ready = st.get("desiredNumberScheduled") or 0, st.get("numberReady") or 0
    updated = st.get("updatedNumberScheduled") or 0
    return want > 0 and ready >= want and updated >= want, \
        f"{ready}/{want} nodes ready, {updated} up to date"


def cluster_status(kubeconfig: Path, fmt: str) -> bool:
    """Print the cluster's mesh status; True when healthy. Backs `status --kubeconfig`."""
    import asyncio

    report = asyncio.run(gather_cluster(kubeconfig))
    if fmt != "table":
        emit(report, fmt)
    else:
        emit(report, fmt, ["CHECK", "OK", "DETAIL"],
             [(c["name"], "yes" if c["ok"] else "NO", c["detail"]) for c in report["checks"]]
             + [(f"agent {a['name']}", "yes" if a["ready"] else "NO",
                 f"node {a['node']}, {a['phase']}") for a in report["nodeAgents"]],
             title="ambient-mesh on " + str(kubeconfig))
        click.echo("enrolled namespaces: " + (", ".join(report["enrolledNamespaces"]) or
                                               "none"))
    return bool(report["healthy"])


@click.command("install")
@click.option("--base", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Kustomize base (default: daemonset/base of this project).")
@click.option("--status", "kubeconfig", type=click.Path(dir_okay=False, path_type=Path),
              default=None, metavar="KUBECONFIG",
              help="Instead of rendering: report the installed mesh of this cluster "
                   "(what `status --kubeconfig` shows); exit 0 only when healthy.")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json", "yaml"]),
              default="table", show_default=True, help="Output format (with --status).")
@click.option("--observability", is_flag=True,
              help="Also render Prometheus (daemonset/observability: pod discovery, RBAC; "
                   "docs/observability.md).")
def command(base: Path | None, kubeconfig: Path | None, fmt: str, observability: bool) -> None:
    """Render the Kubernetes manifests of ambient-mesh (CRDs, RBAC, controller,
    node agent DaemonSet) to stdout, for `kubectl apply -f -`.

    Uses `kubectl kustomize` or `kustomize build` when installed, else renders the
    base's resources itself.

    \b
    Examples:
      ambientctl install | kubectl apply -f -
      ambientctl install > ambient-mesh.yaml
      ambientctl install --observability | kubectl apply -f -
      ambientctl install --status ~/.kube/config
    """
    if kubeconfig is not None:
        raise SystemExit(0 if cluster_status(kubeconfig, fmt) else 1)
    base = base or (default_base().parent / "observability" if observability
                    else default_base())
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

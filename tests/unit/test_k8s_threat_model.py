"""Kubernetes mode has none of local mode's holes (docs/security.md, threat model):
only the node agent touches the host, read-only wherever it only reads; no host path
leads to credentials; tokens are mounted only where they are needed, and a waypoint's
token is good for the controller alone."""

from __future__ import annotations

from typing import Any

from tests.unit.test_k8s_manifests import rendered, waypoint_objects

# Host paths the node agent must write to (pins, cgroup attachments, pod netns), and
# those it only reads.
HOST_WRITABLE = {"/sys/fs/bpf", "/sys/fs/cgroup", "/var/run/netns"}
HOST_READ_ONLY = {"/proc", "/lib/modules", "/usr/src"}
CREDENTIAL_PATHS = ("/", "/etc", "/root", "/var/lib/kubelet", "/etc/kubernetes", "/var/run",
                    "/run", "/var/lib", "/home")


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in objects
            if o["kind"] in ("Deployment", "DaemonSet")}


def host_mounts(pod: dict[str, Any]) -> dict[str, bool]:
    """host path -> mounted read-only?"""
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod.get("volumes", [])
               if "hostPath" in v}
    out: dict[str, bool] = {}
    for container in pod["containers"]:
        for m in container.get("volumeMounts", []):
            if m["name"] in volumes:
                out[volumes[m["name"]]] = bool(m.get("readOnly"))
    return out


def test_only_the_node_agent_mounts_host_paths_and_reads_what_it_only_reads() -> None:
    pods = pod_specs(rendered() + waypoint_objects())
    for name, pod in pods.items():
        if name != "ambient-nodeagent":
            assert host_mounts(pod) == {}, name
            assert not pod.get("hostPID") and not pod.get("hostNetwork"), name
    mounts = host_mounts(pods["ambient-nodeagent"])
    assert set(mounts) == HOST_WRITABLE | HOST_READ_ONLY
    for path in HOST_READ_ONLY:
        assert mounts[path] is True, f"{path} must be mounted read-only"
    for path in mounts:
        assert path not in CREDENTIAL_PATHS, path


def test_tokens_are_mounted_only_where_needed() -> None:
    objects = rendered() + waypoint_objects()
    pods = pod_specs(objects)
    # API access: the controller (watches, CA secret, TokenReview) and the node agent
    # (its node's pods). Nothing else gets a ServiceAccount token.
    api_users = {"ambient-controller", "ambient-nodeagent"}
    for name, pod in pods.items():
        assert bool(pod.get("automountServiceAccountToken")) == (name in api_users), name
    accounts = [o for o in objects if o["kind"] == "ServiceAccount"]
    assert accounts and all(a.get("automountServiceAccountToken") is False for a in accounts)
    # The waypoint holds one projected token, valid only for the mesh's controller.
    waypoint = pods["waypoint"]
    projected = [s["serviceAccountToken"] for v in waypoint["volumes"]
                 for s in v.get("projected", {}).get("sources", [])]
    assert [t["audience"] for t in projected] == ["ambient-mesh"]
    assert all(t["expirationSeconds"] <= 86400 for t in projected)
    assert waypoint["securityContext"]["runAsNonRoot"] is True


def test_mesh_components_are_not_captured_by_the_mesh() -> None:
    """The mesh's own pods opt out: their traffic is never redirected into a proxy."""
    for name, obj in {o["metadata"]["name"]: o for o in rendered() + waypoint_objects()
                      if o["kind"] in ("Deployment", "DaemonSet")}.items():
        annotations = obj["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("ambientmesh.io/dataplane-mode") == "none", name

"""Kubernetes mode's view of the pods on this node: what the kubelet runs, turned into
what enrollment needs — the (PodToRun, Pod) pairs local mode gets from its own
runtime — by finding each pod's processes in the host's /proc.

A pod is found by its UID in the cgroup path of its processes (kubelet names the pod
cgroup `pod<uid>` with the cgroupfs driver, `kubepods-<qos>-pod<uid_with_underscores>.slice`
with the systemd one). Its netns is that of the pod's oldest process (the sandbox,
alive as long as the pod). Its cgroup is the pod-level one, the parent of every
container's cgroup: outbound capture matches a task by its cgroup or any ancestor,
so enrolling the pod-level cgroup captures every container (app, sidecar, init),
not only the first. Pure parts (`pod_spec`, `cgroup_of`, `pod_cgroup`) are separate
from the /proc scan (`PodLocator`)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.api import config_pb2 as pb
from mesh.config.annotations import (
    DATAPLANE_AMBIENT,
    DATAPLANE_MODE,
    DATAPLANE_NONE,
    EXCLUDE_PORTS,
    lookup,
    parse_port_list,
)
from mesh.runtime import Pod
from mesh.runtime.cgroups import cgroup2_root

NO_IPV6 = ipaddress.IPv6Address("::")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def is_enrolled(pod: Mapping[str, Any], namespace: Mapping[str, Any] | None) -> bool:
    """Namespace opted in (annotation or label) and the pod not opted out."""
    meta = _meta(pod)
    if lookup(meta.get("labels") or {}, meta.get("annotations") or {},
              DATAPLANE_MODE) == DATAPLANE_NONE or namespace is None:
        return False
    ns_meta = _meta(namespace)
    return lookup(ns_meta.get("labels") or {}, ns_meta.get("annotations") or {},
                  DATAPLANE_MODE) == DATAPLANE_AMBIENT


def runnable(pod: Mapping[str, Any]) -> bool:
    """A pod the mesh can capture: own network namespace, has an IP, not finished.
    Pending counts once the sandbox has an IP: that is when init containers run, and
    they are containers of the pod like any other (captured from the moment the
    agent has enrolled the pod; with no CNI hook, not before)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    return (status.get("phase") in ("Pending", "Running") and not spec.get("hostNetwork")
            and bool(status.get("podIP")) and not _meta(pod).get("deletionTimestamp"))


def pod_spec(pod: Mapping[str, Any], namespace: Mapping[str, Any] | None,
             trust_domain: str) -> pb.PodToRun:
    meta, spec = _meta(pod), pod.get("spec") or {}
    sa = spec.get("serviceAccountName") or "default"
    annotations = dict(meta.get("annotations") or {})
    try:
        excluded = parse_port_list(annotations.get(EXCLUDE_PORTS, ""))
    except ValueError:
        excluded = []
    return pb.PodToRun(
        namespace=meta.get("namespace", ""), name=meta.get("name", ""),
        uid=meta.get("uid", ""), service_account=sa,
        labels=dict(meta.get("labels") or {}), annotations=annotations,
        enrolled=is_enrolled(pod, namespace), excluded_ports=excluded,
        identity=f"spiffe://{trust_domain}/ns/{meta.get('namespace', '')}/sa/{sa}")


def container_ids(pod: Mapping[str, Any]) -> list[str]:
    """Runtime ids of the app containers, in spec order ("containerd://abc" -> "abc")."""
    status = pod.get("status") or {}
    by_name = {c.get("name"): c for c in status.get("containerStatuses") or []}
    out = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        cid = (by_name.get(c.get("name")) or {}).get("containerID") or ""
        if cid:
            out.append(cid.split("://", 1)[-1])
    return out


def pod_markers(uid: str) -> tuple[str, str]:
    return (f"pod{uid}", f"pod{uid.replace('-', '_')}")


def pod_cgroup(path: str, uid: str) -> str | None:
    """The pod-level cgroup in a process's cgroup path: the path cut after the
    component kubelet named after the pod UID, or None when no component is.

    cgroupfs driver: /kubepods[/burstable|/besteffort]/pod<uid>/<container>
    systemd driver:  /kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid_>.slice/
                     cri-containerd-<id>.scope (crio-, docker- alike)
    The container part may nest further (a scope inside the container); a path seen
    from another cgroup namespace keeps its leading "/..", for PodLocator to resolve."""
    names = "|".join(re.escape(m) for m in pod_markers(uid))
    component = re.compile(rf"(?:.*-)?(?:{names})(?:\.slice)?")
    parts = path.split("/")
    for i, part in enumerate(parts):
        if component.fullmatch(part):
            return "/".join(parts[: i + 1]) or "/"
    return None


def cgroup_of(proc_cgroup_text: str) -> str:
    """The cgroup v2 path in /proc/<pid>/cgroup ("0::/path"), "" if none."""
    for line in proc_cgroup_text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


@dataclass(frozen=True)
class PodProcesses:
    pid: int
    netns: Path
    cgroup: Path


class PodLocator:
    """Finds a pod's processes through /proc (the host's, with hostPID)."""

    def __init__(self, proc_root: Path = Path("/proc"), cgroup_root: Path | None = None) -> None:
        self.proc_root = proc_root
        self.cgroup_root = cgroup_root or cgroup2_root()

    def _scan(self) -> list[tuple[int, str, int]]:
        out = []
        for entry in self.proc_root.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                path = cgroup_of((entry / "cgroup").read_text())
                start = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[19])
            except (OSError, ValueError, IndexError):
                continue
            if path:
                out.append((int(entry.name), path, start))
        return out

    def _absolute(self, path: str, marker: str) -> Path | None:
        """The cgroup directory for `path`; paths seen through another cgroup namespace
        ("/../..") are found again by the pod's directory name."""
        direct = self.cgroup_root / path.lstrip("/")
        if ".." not in Path(path).parts and direct.is_dir():
            return direct
        parts = Path(path).parts
        idx = next((i for i, p in enumerate(parts) if marker in p), None)
        if idx is None:
            return None
        for found in self.cgroup_root.rglob(parts[idx]):
            candidate = found.joinpath(*parts[idx + 1:])
            if candidate.is_dir():
                return candidate
        return None

    def locate(self, uid: str, containers: Sequence[str] = ()) -> PodProcesses | None:
        """The pod's sandbox netns and pod-level cgroup, None while no process of it
        runs. `containers` (runtime ids) is accepted for callers that know them; the
        pod-level cgroup holds every container, so it is not needed to choose one."""
        markers = pod_markers(uid)
        procs = [(pid, path, start, pod_path) for pid, path, start in self._scan()
                 if (pod_path := pod_cgroup(path, uid)) is not None]
        if not procs:
            return None
        sandbox = min(procs, key=lambda p: (p[2], p[0]))
        pod_path = sandbox[3]
        marker = next(m for m in markers if m in pod_path)
        cgroup = self._absolute(pod_path, marker)
        if cgroup is None:
            return None
        return PodProcesses(sandbox[0], self.proc_root / str(sandbox[0]) / "ns" / "net", cgroup)


def runtime_pod(pod: Mapping[str, Any], node: str, found: PodProcesses) -> Pod:
    """The record enrollment works with, for a kubelet-run pod."""
    meta, status = _meta(pod), pod.get("status") or {}
    v4, v6 = "", ""
    for entry in status.get("podIPs") or [{"ip": status.get("podIP", "")}]:
        try:
            addr = ipaddress.ip_address(entry.get("ip", ""))
        except ValueError:
            continue
        if addr.version == 4 and not v4:
            v4 = str(addr)
        elif addr.version == 6 and not v6:
            v6 = str(addr)
    return Pod(
        namespace=meta.get("namespace", ""), name=meta.get("name", ""), node=node,
        netns=str(found.netns), ip=ipaddress.IPv4Address(v4 or "0.0.0.0"),
        ip6=ipaddress.IPv6Address(v6) if v6 else NO_IPV6, host=0,
        cgroup_path=found.cgroup, cgroup_id=found.cgroup.stat().st_ino)

"""Which security policies are in force for a workload (pure functions).

PeerAuthentication: the most specific level that sets a mode wins: a selector policy
in the workload's namespace, then the namespace-wide policy, then the mesh-wide one
(root namespace, no selector); default PERMISSIVE. UNSET defers to the next level.
Several policies at one level: the first by name wins (Istio picks the oldest; our
objects have no creation time that survives restarts).

AuthorizationPolicy at L4 (node proxies): root-namespace policies (mesh-wide, or with
a selector matching in any namespace), and the workload namespace's policies without
selector or with a matching one. Policies with targetRefs belong to waypoints."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from mesh.config import AuthorizationPolicy, PeerAuthentication
from mesh.config.annotations import ROOT_NAMESPACE


def effective_mtls(
    namespace: str,
    labels: Mapping[str, str],
    policies: Sequence[PeerAuthentication],
    root_namespace: str = ROOT_NAMESPACE,
) -> tuple[str, str]:
    """(mode, "ns/name" of the deciding policy or "") for one workload."""
    ordered = sorted(policies, key=lambda p: (p.namespace, p.name))
    levels = (
        [p for p in ordered if p.namespace == namespace and p.spec.selector is not None
         and p.spec.selector.matches(labels)],
        [p for p in ordered if p.namespace == namespace and p.spec.selector is None],
        [p for p in ordered if p.namespace == root_namespace and p.spec.selector is None],
    )
    for level in levels:
        for p in level:
            if p.spec.mtls.mode != "UNSET":
                return p.spec.mtls.mode, f"{p.namespace}/{p.name}"
    return "PERMISSIVE", ""


def workload_authorizations(
    namespace: str,
    labels: Mapping[str, str],
    policies: Iterable[AuthorizationPolicy],
    root_namespace: str = ROOT_NAMESPACE,
) -> list[AuthorizationPolicy]:
    """L4 policies applying to one workload, sorted by namespace/name."""
    out = []
    for p in policies:
        if p.spec.target_refs:
            continue
        if p.namespace not in (namespace, root_namespace):
            continue
        if p.spec.selector is not None and not p.spec.selector.matches(labels):
            continue
        out.append(p)
    return sorted(out, key=lambda p: (p.namespace, p.name))


def waypoint_authorizations(
    waypoint_namespace: str,
    waypoint_name: str,
    services: Iterable[tuple[str, str]],
    policies: Iterable[AuthorizationPolicy],
) -> list[AuthorizationPolicy]:
    """Policies a waypoint enforces: targetRefs naming the waypoint Gateway or one of
    the services it serves."""
    served = set(services)
    out = []
    for p in policies:
        for ref in p.spec.target_refs:
            ns = ref.namespace or p.namespace
            if ref.kind == "Gateway" and (ns, ref.name) == (waypoint_namespace, waypoint_name):
                out.append(p)
                break
            if ref.kind == "Service" and (ns, ref.name) in served:
                out.append(p)
                break
    return sorted(out, key=lambda p: (p.namespace, p.name))

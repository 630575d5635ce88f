"""The node proxy's view of the mesh, rebuilt from each pushed snapshot.

Lookups the data path makes per connection (who is at this address, which service is
behind this VIP and port, what policy applies to this workload) are dictionary hits
here; the snapshot's protobuf objects are indexed once when it is applied.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from mesh.api import config_pb2 as pb
from mesh.authz import Policy, compile_policies
from nodeagent.errors import SnapshotRejected


def normalize_ip(address: str) -> str:
    """One spelling per address; v4-mapped v6 (::ffff:a.b.c.d) becomes plain v4."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass(frozen=True)
class ServiceTarget:
    service: pb.Service
    port: pb.ServicePort

    @property
    def key(self) -> str:
        return f"{self.service.namespace}/{self.service.name}"


@dataclass
class ProxyState:
    """Indexed snapshot. Immutable once built: a new snapshot builds a new state.

    `ProxyState()` is the state before any snapshot: `received` is False and the
    proxy serves nothing with it (see nodeagent.admission), since the policy it would
    apply (STRICT, authorizations, waypoints) is unknown."""

    received: bool = False
    version: str = ""
    trust_domain: str = "cluster.local"
    workloads_by_ip: dict[str, pb.Workload] = field(default_factory=dict)
    workloads_by_uid: dict[str, pb.Workload] = field(default_factory=dict)
    services_by_vip: dict[tuple[str, int], ServiceTarget] = field(default_factory=dict)
    services_by_key: dict[str, pb.Service] = field(default_factory=dict)
    authorizations: dict[str, Policy] = field(default_factory=dict)  # compiled, by ns/name
    policies: dict[str, pb.WorkloadPolicy] = field(default_factory=dict)
    pods_to_run: tuple[pb.PodToRun, ...] = ()

    @classmethod
    def from_snapshot(cls, snap: pb.Snapshot) -> ProxyState:
        state = cls(received=True, version=snap.version,
                    trust_domain=snap.trust_domain or "cluster.local",
                    pods_to_run=tuple(snap.pods_to_run))
        for wl in snap.workloads:
            state.workloads_by_uid[wl.uid] = wl
            for addr in wl.addresses:
                state.workloads_by_ip[_checked_ip(addr, f"workload {wl.namespace}/{wl.name}")] = wl
        for svc in snap.services:
            key = f"{svc.namespace}/{svc.name}"
            state.services_by_key[key] = svc
            for vip in svc.vips:
                ip = _checked_ip(vip, f"service {key}")
                for port in svc.ports:
                    state.services_by_vip[(ip, port.port)] = ServiceTarget(svc, port)
        for authz in compile_policies(snap.authorizations):  # once, not per connection
            state.authorizations[authz.key] = authz
        for policy in snap.workload_policies:
            missing = [a for a in policy.authorizations if a not in state.authorizations]
            if missing:
                raise SnapshotRejected(
                    f"workload {policy.workload_uid} refers to authorization(s) {missing} "
                    "that the snapshot does not carry"
                )
            state.policies[policy.workload_uid] = policy
        return state

    def workload_at(self, ip: str) -> pb.Workload | None:
        return self.workloads_by_ip.get(normalize_ip(ip))

    def service_at(self, ip: str, port: int) -> ServiceTarget | None:
        return self.services_by_vip.get((normalize_ip(ip), port))

    def mtls_mode(self, workload: pb.Workload) -> pb.MtlsMode.ValueType:
        policy = self.policies.get(workload.uid)
        return policy.mtls_mode if policy and policy.mtls_mode else pb.PERMISSIVE

    def authorizations_for(self, workload: pb.Workload) -> list[Policy]:
        policy = self.policies.get(workload.uid)
        return [self.authorizations[name] for name in policy.authorizations] if policy else []

    def workload_identity(self, workload: pb.Workload) -> str:
        return workload.identity or (
            f"spiffe://{self.trust_domain}/ns/{workload.namespace}/sa/"
            f"{workload.service_account or 'default'}"
        )


def _checked_ip(address: str, owner: str) -> str:
    try:
        return normalize_ip(address)
    except ValueError:
        raise SnapshotRejected(f"{owner} has an invalid address {address!r}") from None

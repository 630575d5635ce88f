"""Where an inbound connection may be delivered inside the destination pod.

Three rules, the first two from ztunnel (`illegal_ports` / `Error::SelfCall`, and
delivery to the workload's own address), the third DESIGN §7b's:
- never to one of the proxy's own ports: the proxy holds 15001 / 15006 / 15008 in the
  pod's netns, so delivering there makes the proxy call itself — through 15001 as an
  outbound connection of the victim pod (impersonation), through 15006 in an endless
  loop that exhausts the agent's descriptors;
- to the pod's own address, never to its loopback: an app that bound a port to
  127.0.0.1 / ::1 only chose not to be reachable from other pods, and stays so. The
  proxy's connection to the pod address comes from inside the pod, so the kernel
  gives it the pod's own address as source. It is routed through lo, but sk_lookup
  sees the address's device (eth0) as ingress: what lets it through uncaptured is the
  program's rule that a connection whose source is its destination passes
  (ebpf/inbound.bpf.c, docs/ebpf.md), not the loopback rule;
- to a workload bound to a waypoint (`ambientmesh.io/use-waypoint` on the pod), only
  what the waypoint itself sends: an HBONE peer whose certificate is the waypoint's
  SPIFFE identity. Plaintext never is, nor any other identity (a client going around
  the waypoint, a Service without the waypoint selecting the pod): WaypointBypassed.
  The peer's address is no proof; its certificate is. ztunnel once refused these the
  same way ("bypassed waypoint", 401); Istio now leaves it to an L4 policy.
"""

from __future__ import annotations

from typing import Protocol

from ebpf.constants import HBONE_PORT, INBOUND_PORT, METRICS_PORT, OUTBOUND_PORT
from mesh.api import config_pb2 as pb
from nodeagent.errors import ConnectionRefusedByMesh

PROXY_PORTS: dict[int, str] = {
    OUTBOUND_PORT: "outbound capture",
    INBOUND_PORT: "inbound plaintext capture",
    HBONE_PORT: "inbound HBONE",
    METRICS_PORT: "metrics/health",
}


class Pod(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def ip(self) -> str: ...

    @property
    def ip6(self) -> str: ...


class SelfCall(ConnectionRefusedByMesh):
    """An inbound connection that would reach the node proxy itself."""

    cause = "self_call"

    def __init__(self, pod: str, what: str) -> None:
        super().__init__(f"pod {pod}: {what}: refused, the node proxy never delivers "
                         "a connection to itself")


class NoPodAddress(ConnectionRefusedByMesh):
    """The pod has no address of any family to deliver to (not reported yet)."""

    cause = "no_pod_address"

    def __init__(self, pod: str) -> None:
        super().__init__(f"pod {pod} has no IP address yet: inbound connection refused "
                         "(it is never delivered to the pod's loopback)")


class WaypointBypassed(ConnectionRefusedByMesh):
    """A connection to a workload bound to a waypoint that did not come from it."""

    cause = "waypoint_bypassed"

    def __init__(self, workload: str, waypoint: str, why: str) -> None:
        super().__init__(f"bypassed waypoint {waypoint}: pod {workload} takes traffic only "
                         f"through it, {why}: refused (send to the pod's service or "
                         "address from inside the mesh: the node proxy goes through the "
                         "waypoint)")
        self.waypoint = waypoint


def check_waypoint(workload: pb.Workload | None, peer_identity: str | None) -> None:
    """Raise WaypointBypassed when `workload` is bound to a waypoint and the peer is not
    that waypoint. `peer_identity` is the verified HBONE certificate's SPIFFE ID, None
    for plaintext. A binding whose Gateway does not exist (no identity in the snapshot)
    admits nobody: fail closed, as the source side refuses it too."""
    if workload is None or not workload.HasField("waypoint"):
        return
    wp = workload.waypoint
    name = f"{wp.namespace}/{wp.name}"
    pod = f"{workload.namespace}/{workload.name}"
    if not wp.identity:
        raise WaypointBypassed(pod, name, "and no waypoint Gateway of that name exists")
    if peer_identity is None:
        raise WaypointBypassed(pod, name, "a plaintext connection cannot come from it")
    if peer_identity != wp.identity:
        raise WaypointBypassed(pod, name, f"the peer is {peer_identity}, not the "
                               f"waypoint's {wp.identity}")


def check_port(pod: Pod, port: int) -> None:
    """Raise SelfCall when `port` is one of the proxy's own."""
    what = PROXY_PORTS.get(port)
    if what is not None:
        raise SelfCall(pod.key, f"port {port} is the proxy's {what} port")


def check_peer(pod: Pod, peer_ip: str) -> None:
    """A plaintext connection captured from the pod's own address is the proxy's
    delivery coming back (a pod reaching itself goes through loopback, uncaptured):
    refuse it rather than loop."""
    if peer_ip and peer_ip in (pod.ip, pod.ip6):
        raise SelfCall(pod.key, f"a captured connection from the pod's own address "
                       f"{peer_ip}")


def app_address(pod: Pod, v6: bool) -> str:
    """The pod address to deliver to: the family the client used when the pod has it,
    else the other one (apps usually listen dual-stack)."""
    first, second = (pod.ip6, pod.ip) if v6 else (pod.ip, pod.ip6)
    address = first or second
    if not address:
        raise NoPodAddress(pod.key)
    return address

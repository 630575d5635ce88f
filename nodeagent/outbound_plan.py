"""Where an outbound connection goes, decided from the original destination alone.

Sans-I/O: the proxy asks for a plan, then tries its hops in order (the next hop is
the next endpoint when one refuses). Rules, as ztunnel applies them:
  - a service VIP:port -> its waypoint if it has one, else its endpoints (round robin,
    failed ones last); enrolled endpoints over HBONE, others in plaintext;
  - a pod IP -> its waypoint if the pod uses one, else HBONE if it is in the mesh,
    else plaintext;
  - anything else -> passthrough, untouched.
A destination bound to a waypoint never skips it: while the waypoint has no ready
address (rollout, crash) or its Gateway does not exist (deleted, typo in
use-waypoint), `WaypointUnavailable` is raised and the connection is refused, as
Istio does; going straight to the endpoints would bypass every L7 policy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mesh.api import config_pb2 as pb
from mesh.ports import HBONE_PORT
from nodeagent.balance import EndpointPicker, backends_for
from nodeagent.errors import NoHealthyEndpoint, WaypointUnavailable
from nodeagent.state import ProxyState


class Transport(enum.Enum):
    HBONE = "hbone"
    PLAINTEXT = "plaintext"
    PASSTHROUGH = "passthrough"


@dataclass(frozen=True)
class Hop:
    transport: Transport
    address: str  # where the proxy connects: a pod/waypoint IP, or the original destination
    port: int  # 15008 for HBONE, the destination port otherwise
    authority: str  # HBONE :authority, the ip:port the far side delivers to
    workload: pb.Workload | None  # destination workload, when known
    service: str | None  # "namespace/name" of the destination service
    via_waypoint: bool = False
    target_port: int = 0  # the port the app will see (for backend accounting)
    waypoint: str = ""  # "namespace/name" of the waypoint, when via_waypoint


def _fmt(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def waypoint_name(wp: pb.WaypointRef) -> str:
    return f"{wp.namespace}/{wp.name}"


def _waypoint_hop(wp: pb.WaypointRef, ip: str, port: int, service: str | None,
                  state: ProxyState) -> Hop:
    """The hop to the destination's waypoint; raises WaypointUnavailable when there is
    none to go to (the controller sends the binding with no identity when the Gateway
    does not exist, with no address while its pod is not ready)."""
    if not wp.addresses:
        destination = f"service {service}" if service else _fmt(ip, port)
        why = ("no waypoint Gateway of that name exists" if not wp.identity
               else "it has no ready address")
        raise WaypointUnavailable(waypoint_name(wp), destination, why)
    v6 = ":" in ip
    addr = next((a for a in wp.addresses if (":" in a) == v6), wp.addresses[0])
    return Hop(Transport.HBONE, addr, wp.port or HBONE_PORT, _fmt(ip, port),
               state.workload_at(addr), service, via_waypoint=True, target_port=port,
               waypoint=waypoint_name(wp))


def plan(state: ProxyState, picker: EndpointPicker, dst_ip: str, dst_port: int,
         now: float) -> list[Hop]:
    """Every hop worth trying for one connection, best first."""
    target = state.service_at(dst_ip, dst_port)
    if target is not None:
        svc = target.service
        if svc.HasField("waypoint"):
            return [_waypoint_hop(svc.waypoint, dst_ip, dst_port, target.key, state)]
        backends = backends_for(svc, target.port, prefer_v6=":" in dst_ip)
        hops = []
        for b in picker.candidates(target.key, backends, now):
            wl = state.workloads_by_uid.get(b.endpoint.workload_uid)
            in_mesh = b.endpoint.enrolled or (wl is not None and (wl.enrolled or wl.native_hbone))
            if in_mesh:
                hops.append(Hop(Transport.HBONE, b.address, HBONE_PORT, _fmt(b.address, b.port),
                                wl, target.key, target_port=b.port))
            else:
                hops.append(Hop(Transport.PLAINTEXT, b.address, b.port, _fmt(b.address, b.port),
                                wl, target.key, target_port=b.port))
        if not hops:
            raise NoHealthyEndpoint(target.key, dst_port)
        return hops
    wl = state.workload_at(dst_ip)
    if wl is not None:
        if wl.HasField("waypoint"):
            return [_waypoint_hop(wl.waypoint, dst_ip, dst_port, None, state)]
        if wl.enrolled or wl.native_hbone:
            return [Hop(Transport.HBONE, dst_ip, HBONE_PORT, _fmt(dst_ip, dst_port), wl, None,
                        target_port=dst_port)]
        return [Hop(Transport.PLAINTEXT, dst_ip, dst_port, _fmt(dst_ip, dst_port), wl, None,
                    target_port=dst_port)]
    return [Hop(Transport.PASSTHROUGH, dst_ip, dst_port, _fmt(dst_ip, dst_port), None, None,
                target_port=dst_port)]

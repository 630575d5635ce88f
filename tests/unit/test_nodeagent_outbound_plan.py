from __future__ import annotations

import pytest

from mesh.api import config_pb2 as pb
from nodeagent.balance import EndpointPicker
from nodeagent.errors import NoHealthyEndpoint, WaypointUnavailable
from nodeagent.outbound_plan import Transport, plan
from nodeagent.state import ProxyState


def state(waypoint: bool = False, enrolled_b2: bool = True,
          waypoint_addresses: tuple[str, ...] = ("10.100.2.7",),
          waypoint_identity: str = "spiffe://cluster.local/ns/demo/sa/wp",
          pod_waypoint: bool = False) -> ProxyState:
    wls = [
        pb.Workload(uid="b1", namespace="demo", name="b1", addresses=["10.100.1.3"], enrolled=True),
        pb.Workload(uid="b2", namespace="demo", name="b2", addresses=["10.100.2.3"],
                    enrolled=enrolled_b2),
        pb.Workload(uid="plain", namespace="legacy", name="plain", addresses=["10.100.2.9"]),
        pb.Workload(uid="wp", namespace="demo", name="wp", addresses=["10.100.2.7"],
                    native_hbone=True),
    ]
    eps = [pb.Endpoint(workload_uid=w.uid, addresses=list(w.addresses), enrolled=w.enrolled,
                       ports=[pb.EndpointPort(service_port=80, target_port=8080)])
           for w in wls[:2]]
    svc = pb.Service(namespace="demo", name="b", vips=["10.96.0.10"],
                     ports=[pb.ServicePort(port=80, target_port=8080)], endpoints=eps)
    ref = pb.WaypointRef(namespace="demo", name="wp", addresses=list(waypoint_addresses),
                         port=15008, identity=waypoint_identity)
    if waypoint:
        svc.waypoint.CopyFrom(ref)
    if pod_waypoint:
        wls[0].waypoint.CopyFrom(ref)
    empty = pb.Service(namespace="demo", name="empty", vips=["10.96.0.11"],
                       ports=[pb.ServicePort(port=80)])
    return ProxyState.from_snapshot(pb.Snapshot(workloads=wls, services=[svc, empty]))


def test_service_vip_balances_over_hbone_endpoints() -> None:
    picker = EndpointPicker()
    first = plan(state(), picker, "10.96.0.10", 80, now=0)
    second = plan(state(), picker, "10.96.0.10", 80, now=0)
    assert [h.address for h in first] == ["10.100.1.3", "10.100.2.3"]
    assert [h.address for h in second] == ["10.100.2.3", "10.100.1.3"]
    hop = first[0]
    assert hop.transport is Transport.HBONE and hop.port == 15008
    assert hop.authority == "10.100.1.3:8080" and hop.service == "demo/b"


def test_non_enrolled_endpoint_gets_plaintext() -> None:
    hops = plan(state(enrolled_b2=False), EndpointPicker(), "10.96.0.10", 80, now=0)
    plain = next(h for h in hops if h.address == "10.100.2.3")
    assert plain.transport is Transport.PLAINTEXT and plain.port == 8080


def test_service_with_waypoint_goes_to_waypoint_with_vip_authority() -> None:
    (hop,) = plan(state(waypoint=True), EndpointPicker(), "10.96.0.10", 80, now=0)
    assert hop.via_waypoint and hop.address == "10.100.2.7" and hop.port == 15008
    assert hop.authority == "10.96.0.10:80"


def test_pod_ip_and_unknown_destinations() -> None:
    s = state()
    (hop,) = plan(s, EndpointPicker(), "10.100.1.3", 9000, now=0)
    assert hop.transport is Transport.HBONE and hop.authority == "10.100.1.3:9000"
    (hop,) = plan(s, EndpointPicker(), "10.100.2.9", 5432, now=0)
    assert hop.transport is Transport.PLAINTEXT and hop.port == 5432
    (hop,) = plan(s, EndpointPicker(), "192.0.2.1", 443, now=0)
    assert hop.transport is Transport.PASSTHROUGH


def test_service_without_endpoints_is_a_clear_error() -> None:
    with pytest.raises(NoHealthyEndpoint, match="demo/empty"):
        plan(state(), EndpointPicker(), "10.96.0.11", 80, now=0)


def test_service_whose_waypoint_is_not_ready_is_refused_not_bypassed() -> None:
    """Issue 20 finding 3: the hop used to fall back to the endpoints themselves."""
    with pytest.raises(WaypointUnavailable, match=r"waypoint demo/wp .*no ready address") as e:
        plan(state(waypoint=True, waypoint_addresses=()), EndpointPicker(), "10.96.0.10", 80,
             now=0)
    assert e.value.waypoint == "demo/wp" and "service demo/b" in str(e.value)


def test_service_bound_to_a_missing_gateway_is_refused() -> None:
    """use-waypoint naming a Gateway that does not exist: the controller sends the
    binding with neither address nor identity; traffic is refused (as Istio does)."""
    with pytest.raises(WaypointUnavailable, match="no waypoint Gateway of that name exists"):
        plan(state(waypoint=True, waypoint_addresses=(), waypoint_identity=""),
             EndpointPicker(), "10.96.0.10", 80, now=0)


def test_pod_bound_to_a_waypoint_never_skips_it() -> None:
    (hop,) = plan(state(pod_waypoint=True), EndpointPicker(), "10.100.1.3", 9000, now=0)
    assert hop.via_waypoint and hop.waypoint == "demo/wp" and hop.address == "10.100.2.7"
    with pytest.raises(WaypointUnavailable, match=r"10\.100\.1\.3:9000"):
        plan(state(pod_waypoint=True, waypoint_addresses=()), EndpointPicker(), "10.100.1.3",
             9000, now=0)

"""Istio's standard labels, built in one place (mesh.telemetry.labels) for the node
proxy's TCP metrics and the waypoint's HTTP metrics: who a caller is, how a workload
is named, and that "unknown" is written only for what is truly unknown."""

from __future__ import annotations

import pytest

from mesh.api import config_pb2 as pb
from mesh.telemetry.labels import (
    HTTP_LABELS,
    NOBODY,
    PEER_LABELS,
    TCP_LABELS,
    UNKNOWN,
    Party,
    ServiceRef,
    http_label_values,
    party,
    peer_values,
    source_party,
    tcp_label_values,
)
from nodeagent.metrics import ConnectionLabels, ProxyMetrics
from waypoint.config import ServiceInfo, build
from waypoint.pipeline import _address, peer_labels
from waypoint.upstream import Endpoint

BUYER = "spiffe://cluster.local/ns/shop/sa/buyer"
OTHER = "spiffe://cluster.local/ns/ops/sa/intruder"
BUYER_WL = Party("buyer-deploy", "shop", BUYER, "storefront")


@pytest.mark.parametrize(("name", "labels", "workload", "app"), [
    ("buyer-7f9", {"ambientmesh.io/deployment": "buyer", "app": "store"}, "buyer", "store"),
    ("buyer-7f9", {"app.kubernetes.io/name": "store", "app": "x"}, "store", "store"),
    ("buyer-7f9", {"app": "store"}, "store", "store"),
    ("buyer-7f9", {}, "buyer-7f9", UNKNOWN),
    ("buyer-7f9", {"app": ""}, "buyer-7f9", UNKNOWN),  # an empty label names nothing
    ("", {}, UNKNOWN, UNKNOWN),
])
def test_a_workload_is_named_by_its_deployment_then_its_pod(
        name: str, labels: dict[str, str], workload: str, app: str) -> None:
    p = party(name, "shop", labels, BUYER)
    assert (p.workload, p.namespace, p.principal, p.app) == (workload, "shop", BUYER, app)
    assert party(name, "", labels).namespace == UNKNOWN
    assert party(name, "shop", labels).principal == UNKNOWN


def test_the_caller_is_the_workload_at_its_address_when_its_certificate_proves_it() -> None:
    assert source_party(BUYER_WL, BUYER) is BUYER_WL


def test_an_address_never_names_a_workload_for_another_identity() -> None:
    """The workload at the source address carries another identity (a reused IP, a
    stale snapshot, a forged source): its name is not put on this caller's traffic;
    the certificate still gives principal and namespace."""
    assert source_party(BUYER_WL, OTHER) == Party(UNKNOWN, "ops", OTHER, UNKNOWN)


def test_a_caller_not_in_the_snapshot_is_named_by_its_certificate_only() -> None:
    assert source_party(None, BUYER) == Party(UNKNOWN, "shop", BUYER, UNKNOWN)
    # Not a workload SPIFFE ID: no namespace is guessed from it.
    assert source_party(None, "spiffe://cluster.local/weird") == \
        Party(UNKNOWN, UNKNOWN, "spiffe://cluster.local/weird", UNKNOWN)


def test_plaintext_is_labelled_by_address_as_istio_does() -> None:
    assert source_party(BUYER_WL, None) is BUYER_WL
    assert source_party(None, None) is NOBODY
    assert source_party(None, "") is NOBODY


def test_label_values_line_up_with_their_names() -> None:
    peer = peer_values(BUYER_WL, Party("catalog", "shop", "spiffe://td/ns/shop/sa/c", "cat"),
                       ServiceRef("catalog.shop.svc.cluster.local", "catalog", "shop"))
    assert len(peer) == len(PEER_LABELS)
    http = dict(zip(HTTP_LABELS, http_label_values("waypoint", peer, "grpc", 503, "UF",
                                                     "mutual_tls"), strict=True))
    assert http == {
        "reporter": "waypoint", "source_workload": "buyer-deploy",
        "source_workload_namespace": "shop", "source_principal": BUYER,
        "source_app": "storefront", "destination_workload": "catalog",
        "destination_workload_namespace": "shop",
        "destination_principal": "spiffe://td/ns/shop/sa/c", "destination_app": "cat",
        "destination_service": "catalog.shop.svc.cluster.local",
        "destination_service_name": "catalog", "destination_service_namespace": "shop",
        "request_protocol": "grpc", "response_code": "503", "response_flags": "UF",
        "connection_security_policy": "mutual_tls"}
    tcp = dict(zip(TCP_LABELS, tcp_label_values("source", peer, "-", "none"), strict=True))
    assert "response_code" not in tcp and tcp["request_protocol"] == "tcp"
    assert {k: v for k, v in http.items() if k in PEER_LABELS} == \
        {k: v for k, v in tcp.items() if k in PEER_LABELS}


def test_node_proxy_tcp_series_carry_the_shared_label_set() -> None:
    m = ProxyMetrics()
    labels = ConnectionLabels(
        reporter="source", source_workload="buyer-deploy", source_workload_namespace="shop",
        source_principal=BUYER, destination_workload="catalog",
        destination_workload_namespace="shop",
        destination_service="catalog.shop.svc.cluster.local",
        connection_security_policy="mutual_tls")
    m.connection_opened(labels)
    from prometheus_client import generate_latest
    line = next(x for x in generate_latest(m.registry).decode().splitlines()
                if x.startswith("istio_tcp_connections_opened_total{"))
    for pair in ('source_workload="buyer-deploy"', f'source_principal="{BUYER}"',
                 'destination_service_name="catalog"', 'destination_service_namespace="shop"',
                 'request_protocol="tcp"', 'reporter="source"', 'source_app="unknown"'):
        assert pair in line, line
    bare = dict(zip(TCP_LABELS, ConnectionLabels(reporter="destination").values(), strict=True))
    assert bare["destination_service"] == bare["destination_service_name"] == UNKNOWN


def _snapshot() -> pb.Snapshot:
    return pb.Snapshot(kind=pb.WAYPOINT, workloads=[
        pb.Workload(uid="b", namespace="shop", name="buyer-7f9", addresses=["10.1.0.5",
                    "fd00::5"], identity=BUYER,
                    labels={"ambientmesh.io/deployment": "buyer-deploy", "app": "storefront"}),
        pb.Workload(uid="c", namespace="shop", name="catalog-0", addresses=["10.2.0.9"],
                    identity="spiffe://cluster.local/ns/shop/sa/catalog",
                    labels={"app": "catalog"}),
    ])


def test_the_waypoint_names_its_caller_from_the_snapshot_workload_at_the_tunnel_source() -> None:
    cfg = build(_snapshot())
    assert cfg.workloads_by_ip["10.1.0.5"] == cfg.workloads_by_ip["fd00::5"] == BUYER_WL
    ep = Endpoint("10.2.0.9", 8080, "catalog", "shop",
                  "spiffe://cluster.local/ns/shop/sa/catalog", True)
    svc = ServiceInfo("shop", "catalog", ("catalog",), ("10.96.0.1",), (), {})
    for peer in ("10.1.0.5:40000", "fd00::5:40000", "::ffff:10.1.0.5:40000"):
        src = _address(peer)
        got = dict(zip(PEER_LABELS, peer_labels(BUYER, cfg.workloads_by_ip.get(src), ep, svc,
                                                "catalog.shop", cfg.workloads_by_ip),
                       strict=True))
        assert got["source_workload"] == "buyer-deploy", peer
        assert got["source_app"] == "storefront" and got["source_principal"] == BUYER
        assert got["destination_app"] == "catalog"
        assert got["destination_service"] == "catalog.shop.svc.cluster.local"
    # Another identity from the buyer's address, and a caller from nowhere known.
    other = dict(zip(PEER_LABELS, peer_labels(OTHER, cfg.workloads_by_ip["10.1.0.5"], ep,
                                              None, "x.example", cfg.workloads_by_ip),
                     strict=True))
    assert (other["source_workload"], other["source_workload_namespace"]) == (UNKNOWN, "ops")
    assert other["destination_service"] == "x.example"
    assert other["destination_service_name"] == UNKNOWN


def test_the_waypoint_keeps_a_callers_labels_only_until_the_next_snapshot() -> None:
    """Labels are cached per (caller, endpoint); a snapshot that renames the caller's
    workload is seen at once, and the buyer's tunnel is not labelled as another pod."""
    from typing import Any, cast

    from waypoint.accesslog import AccessLog
    from waypoint.metrics import WaypointMetrics
    from waypoint.pipeline import Runtime
    from waypoint.state import WaypointState

    none = cast(Any, None)
    rt = Runtime(WaypointState(build(_snapshot())), none, none, WaypointMetrics(), AccessLog(None))
    first = rt.peer_labels(BUYER, "10.1.0.5", None, None, "catalog.shop")
    assert first[0] == "buyer-deploy" and rt.peer_labels(BUYER, "10.1.0.5", None, None,
                                                         "catalog.shop") is first
    assert rt.peer_labels(BUYER, "10.2.0.9", None, None, "catalog.shop")[0] == UNKNOWN
    snap = _snapshot()
    snap.workloads[0].labels["ambientmesh.io/deployment"] = "buyer-v2"
    rt.state.update(build(snap))
    assert rt.peer_labels(BUYER, "10.1.0.5", None, None, "catalog.shop")[0] == "buyer-v2"


def test_the_node_proxy_names_an_inbound_caller_by_the_same_rule() -> None:
    """The destination-side node proxy (reporter="destination") uses source_party too:
    the workload at the tunnel's source address only when the certificate proves it."""
    from nodeagent.metrics import caller

    buyer = _snapshot().workloads[0]
    assert caller(buyer, BUYER) == BUYER_WL
    assert caller(buyer, OTHER) == Party(UNKNOWN, "ops", OTHER, UNKNOWN)
    assert caller(None, BUYER) == Party(UNKNOWN, "shop", BUYER, UNKNOWN)
    assert caller(buyer, None) == BUYER_WL  # plaintext: by address, as Istio
    assert caller(None, None) == NOBODY


def test_the_waypoint_logs_an_address_that_names_another_identity_once() -> None:
    from typing import Any, cast

    from structlog.testing import capture_logs

    from waypoint.accesslog import AccessLog
    from waypoint.metrics import WaypointMetrics
    from waypoint.pipeline import Runtime
    from waypoint.state import WaypointState

    none = cast(Any, None)
    rt = Runtime(WaypointState(build(_snapshot())), none, none, WaypointMetrics(), AccessLog(None))
    with capture_logs() as logs:
        for _ in range(3):
            got = rt.peer_labels(OTHER, "10.1.0.5", None, None, "catalog.shop")
            assert got[:3] == (UNKNOWN, "ops", OTHER)
    (entry,) = [e for e in logs if e["event"].startswith("caller address belongs")]
    assert entry["workload"] == "shop/buyer-deploy" and entry["workload_identity"] == BUYER

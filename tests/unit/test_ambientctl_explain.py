"""explain, on hand-built snapshots shaped like the controller's: the decision comes
from the proxies' own code, so these pin down what the user is told."""

from __future__ import annotations

import pytest

from ambientctl.explain import Explainer, ExplainError, ExplainRequest, Explanation
from ambientctl.refs import parse_destination
from mesh.api import config_pb2 as pb

TD = "cluster.local"


def ident(ns: str, sa: str) -> str:
    return f"spiffe://{TD}/ns/{ns}/sa/{sa}"


def workload(uid: str, ns: str, name: str, ip: str, node: str, sa: str, enrolled: bool = True,
             native: bool = False) -> pb.Workload:
    return pb.Workload(uid=uid, namespace=ns, name=name, addresses=[ip], node=node,
                       service_account=sa, identity=ident(ns, sa), enrolled=enrolled,
                       native_hbone=native, phase="Running")


WAYPOINT_REF = pb.WaypointRef(namespace="demo", name="waypoint", addresses=["10.100.1.9"],
                              port=15008, identity=ident("demo", "waypoint"))
WORKLOADS = [
    workload("fe", "demo", "frontend-0", "10.100.1.3", "node-1", "frontend"),
    workload("inv", "demo", "inventory-0", "10.100.2.3", "node-2", "inventory"),
    workload("c1", "demo", "catalog-v1-0", "10.100.1.2", "node-1", "catalog"),
    workload("c2", "demo", "catalog-v2-0", "10.100.2.2", "node-2", "catalog"),
    workload("cl", "legacy", "client", "10.100.2.4", "node-2", "default", enrolled=False),
    workload("wp", "demo", "waypoint", "10.100.1.9", "node-1", "waypoint", enrolled=False,
             native=True),
]


def service(name: str, vip: str, port: int, target: int, eps: list[tuple[str, str, str]],
            waypoint: pb.WaypointRef | None = None) -> pb.Service:
    svc = pb.Service(
        namespace="demo", name=name, vips=[vip],
        hostnames=[name, f"{name}.demo", f"{name}.demo.svc.cluster.local"],
        ports=[pb.ServicePort(name="p", port=port, target_port=target)],
        endpoints=[pb.Endpoint(workload_uid=uid, addresses=[ip], node=node, enrolled=True,
                               ports=[pb.EndpointPort(service_port=port, target_port=target)])
                   for uid, ip, node in eps])
    if waypoint is not None:
        svc.waypoint.CopyFrom(waypoint)
    return svc


SERVICES = [
    service("inventory", "10.96.0.14", 9000, 9000, [("inv", "10.100.2.3", "node-2")]),
    service("catalog", "10.96.0.10", 80, 8080,
            [("c1", "10.100.1.2", "node-1"), ("c2", "10.100.2.2", "node-2")], WAYPOINT_REF),
    service("catalog-v1", "10.96.0.11", 80, 8080, [("c1", "10.100.1.2", "node-1")]),
    service("catalog-v2", "10.96.0.12", 80, 8080, [("c2", "10.100.2.2", "node-2")]),
]

INVENTORY_POLICY = pb.Authorization(
    namespace="demo", name="inventory-frontend-only", action=pb.ALLOW,
    selector={"app": "inventory"},
    rules=[pb.Rule(sources=[pb.Source(principals=["cluster.local/ns/demo/sa/frontend"])],
                   operations=[pb.Operation(ports=[9000])])])
NO_DELETE = pb.Authorization(
    namespace="demo", name="catalog-no-delete", action=pb.DENY,
    targets=[pb.PolicyTarget(kind="Service", namespace="demo", name="catalog")],
    rules=[pb.Rule(operations=[pb.Operation(methods=["DELETE"])])])
ROUTE = pb.HTTPRoute(
    namespace="demo", name="catalog",
    parents=[pb.RouteParent(namespace="demo", service="catalog", port=80)],
    rules=[pb.RouteRule(
        matches=[pb.RouteMatch(path=pb.StringMatch(type=pb.StringMatch.PREFIX, value="/"))],
        backends=[pb.BackendRef(namespace="demo", name="catalog-v1", port=80, weight=90),
                  pb.BackendRef(namespace="demo", name="catalog-v2", port=80, weight=10)])])


def snapshots(strict_inventory: bool = False) -> dict[str, pb.Snapshot]:
    node1 = pb.Snapshot(version="1", kind=pb.NODE, trust_domain=TD, workloads=WORKLOADS,
                        services=SERVICES)
    node2 = pb.Snapshot(version="2", kind=pb.NODE, trust_domain=TD, workloads=WORKLOADS,
                        services=SERVICES, authorizations=[INVENTORY_POLICY])
    node2.workload_policies.append(pb.WorkloadPolicy(
        workload_uid="inv", mtls_mode=pb.STRICT if strict_inventory else pb.PERMISSIVE,
        mtls_policy="demo/default" if strict_inventory else "",
        authorizations=["demo/inventory-frontend-only"]))
    wp = pb.Snapshot(version="3", kind=pb.WAYPOINT, trust_domain=TD, workloads=WORKLOADS,
                     services=SERVICES, authorizations=[NO_DELETE], routes=[ROUTE])
    return {"node-1": node1, "node-2": node2, "demo/waypoint": wp}


def explain(src: str, dst: str, method: str = "GET", strict: bool = False,
            snaps: dict[str, pb.Snapshot] | None = None) -> Explanation:
    snaps = snaps if snaps is not None else snapshots(strict)
    ns, _, name = src.partition("/")
    node = next(w.node for w in WORKLOADS if w.namespace == ns and w.name == name)
    return Explainer(snaps.__getitem__).explain(
        ExplainRequest((ns, name), parse_destination(dst), method), node)


def test_plaintext_caller_is_denied_by_the_allow_policy() -> None:
    e = explain("legacy/client", "demo/inventory:9000")
    assert not e.allowed
    assert e.decided_by == "AuthorizationPolicy demo/inventory-frontend-only"
    assert e.steps[0].stage == "capture" and "not captured" in e.steps[0].detail
    assert e.backends == [{"address": "10.100.2.3:9000", "transport": "plaintext",
                           "pod": "demo/inventory-0", "node": "node-2", "allowed": False,
                           "decidedBy": "demo/inventory-frontend-only"}]


def test_frontend_is_allowed_over_mtls_with_both_identities() -> None:
    e = explain("demo/frontend-0", "inventory.demo:9000")
    assert e.allowed
    assert e.decided_by == "AuthorizationPolicy demo/inventory-frontend-only"
    mtls = next(s for s in e.steps if s.stage == "mtls")
    assert mtls.facts == {"client": ident("demo", "frontend"),
                          "server": ident("demo", "inventory")}
    assert "captured on node-1" in e.steps[0].detail


def test_strict_mtls_refuses_plaintext_before_policies() -> None:
    e = explain("legacy/client", "demo/inventory-0:9000", strict=True)
    assert not e.allowed
    assert e.decided_by == "PeerAuthentication demo/default"


def test_http_through_the_waypoint_reports_rule_and_canary_split() -> None:
    e = explain("demo/frontend-0", "catalog.demo:80/items")
    assert e.allowed
    assert e.route == {"rule": "demo/catalog#0", "backends": [
        {"service": "catalog-v1.demo", "port": 80, "weight": 90, "percent": 90.0},
        {"service": "catalog-v2.demo", "port": 80, "weight": 10, "percent": 10.0}]}
    stages = [s.stage for s in e.steps]
    assert stages[:4] == ["capture", "resolve", "mtls", "L7 policy"]
    assert "demo/waypoint" in e.steps[1].detail
    # Each backend is reached from the waypoint, with the waypoint's identity.
    assert {b["service"] for b in e.backends} == {"demo/catalog-v1", "demo/catalog-v2"}
    hops = [s for s in e.steps if s.stage == "mtls"][1:]
    assert all(h.facts["client"] == ident("demo", "waypoint") for h in hops)


def test_l7_deny_names_the_policy() -> None:
    e = explain("demo/frontend-0", "catalog.demo:80/items", method="DELETE")
    assert not e.allowed
    assert e.decided_by == "AuthorizationPolicy demo/catalog-no-delete"
    assert e.route is None


def test_unknown_destination_is_a_clear_error() -> None:
    with pytest.raises(ExplainError) as err:
        explain("demo/frontend-0", "nosuch.demo:80")
    assert "no service or pod 'nosuch.demo'" in err.value.message
    assert "demo/catalog" in err.value.hint


def test_wrong_service_port_lists_the_right_ones() -> None:
    with pytest.raises(ExplainError) as err:
        explain("demo/frontend-0", "inventory.demo:80")
    assert err.value.hint == "its ports: 9000"


# ---- explain decides with the proxies' own builders and engine (issue 19) ----------------

CATALOG = pb.PolicyTarget(kind="Service", namespace="demo", name="catalog")


def with_waypoint_deny(name: str, target: pb.PolicyTarget, operation: pb.Operation
                       ) -> dict[str, pb.Snapshot]:
    """The usual snapshots, the waypoint's policy replaced by one DENY."""
    snaps = snapshots()
    del snaps["demo/waypoint"].authorizations[:]
    snaps["demo/waypoint"].authorizations.append(pb.Authorization(
        namespace="demo", name=name, action=pb.DENY, targets=[target],
        rules=[pb.Rule(operations=[operation])]))
    return snaps


def test_gateway_targeted_policy_is_applied_as_the_waypoint_applies_it() -> None:
    """The waypoint applies a policy targeting its Gateway to every service it serves;
    explain used to skip it and answer ALLOWED."""
    snaps = with_waypoint_deny("waypoint-no-post", pb.PolicyTarget(
        kind="Gateway", namespace="demo", name="waypoint"), pb.Operation(methods=["POST"]))
    e = explain("demo/frontend-0", "catalog.demo:80/items", method="POST", snaps=snaps)
    assert not e.allowed and e.decided_by == "AuthorizationPolicy demo/waypoint-no-post"


def test_policy_methods_in_any_case_are_enforced() -> None:
    """The waypoint upper-cases a policy's methods; explain did not, and said a DELETE
    passed a DENY written `methods: [delete]`."""
    snaps = with_waypoint_deny("no-delete", CATALOG, pb.Operation(methods=["delete"]))
    e = explain("demo/frontend-0", "catalog.demo:80/items", method="DELETE", snaps=snaps)
    assert not e.allowed and e.decided_by == "AuthorizationPolicy demo/no-delete"


def test_uncompilable_l4_policy_is_explained_as_the_deny_all_it_is() -> None:
    snaps = snapshots()
    snaps["node-2"].authorizations[0].rules[0].sources[0].ip_blocks.append("10.100.0.0/16x")
    e = explain("demo/frontend-0", "inventory.demo:9000", snaps=snaps)
    assert not e.allowed
    assert e.decided_by == "AuthorizationPolicy demo/inventory-frontend-only"
    assert "could not be compiled" in e.reason and "ipBlocks[0]" in e.reason


def test_path_is_normalized_before_the_l7_policy_as_at_the_waypoint() -> None:
    snaps = with_waypoint_deny("no-admin", CATALOG, pb.Operation(paths=["/admin", "/admin/*"]))
    e = explain("demo/frontend-0", "catalog.demo:80/items/../admin", snaps=snaps)
    assert not e.allowed and e.decided_by == "AuthorizationPolicy demo/no-admin"
    bad = explain("demo/frontend-0", "catalog.demo:80/items%2Fx", snaps=snaps)
    assert not bad.allowed and "bad request (400)" in bad.reason

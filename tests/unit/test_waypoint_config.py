"""WAYPOINT snapshot -> route tables, traffic settings, authz; bad input is named."""

from __future__ import annotations

import pytest

from mesh.api import config_pb2 as pb
from waypoint.config import build, split_hostport
from waypoint.errors import RouteConfigError
from waypoint.messages import RequestHead


def svc(name: str, vip: str = "", app_protocol: str = "") -> pb.Service:
    return pb.Service(
        namespace="default", name=name, hostnames=[name, f"{name}.default.svc.cluster.local"],
        vips=[vip] if vip else [],
        ports=[pb.ServicePort(name="http", port=80, target_port=8080,
                              app_protocol=app_protocol)],
        endpoints=[pb.Endpoint(workload_uid="u1", addresses=["10.0.0.5"], enrolled=True,
                               identity="spiffe://cluster.local/ns/default/sa/web",
                               ports=[pb.EndpointPort(service_port=80, target_port=9090)])])


def snap(*, routes: list[pb.HTTPRoute] | None = None,
         traffic: list[pb.TrafficPolicy] | None = None,
         authz: list[pb.Authorization] | None = None) -> pb.Snapshot:
    return pb.Snapshot(
        version="v7", kind=pb.WAYPOINT, trust_domain="cluster.local",
        waypoint=pb.WaypointInfo(namespace="default", name="wp",
                                 services=["default/web", "default/api"]),
        services=[svc("web", "10.96.0.1"), svc("api", app_protocol="grpc"), svc("v2")],
        workloads=[pb.Workload(uid="u1", namespace="default", name="web-abc",
                               labels={"app": "web"})],
        routes=routes or [], traffic_policies=traffic or [], authorizations=authz or [])


def test_services_resolve_by_vip_then_host() -> None:
    cfg = build(snap())
    assert cfg.version == "v7" and cfg.served == {"default/web", "default/api"}
    found = cfg.resolve("10.96.0.1:80", "whatever")
    assert found is not None and found[0].key == "default/web" and found[1] == 80
    found = cfg.resolve(None, "API.default.svc.cluster.local:80")
    assert found is not None and found[0].key == "default/api"
    assert cfg.resolve(None, "v2.default.svc.cluster.local") is None  # not served
    ep = cfg.services["default/web"].endpoints[80][0]
    assert (ep.address, ep.port, ep.in_mesh, ep.workload) == ("10.0.0.5", 9090, True, "web")
    assert cfg.services["default/api"].port(80).upstream_h2 is True  # type: ignore[union-attr]
    assert cfg.services["default/web"].port(80).upstream_h2 is None  # type: ignore[union-attr]


def test_service_without_routes_gets_a_default_route() -> None:
    cfg = build(snap())
    sel = cfg.routes["default/web"].select(RequestHead("GET", "/x", "web", []))
    assert sel is not None and sel.rule.backends[0].service == "default/web"


def test_routes_attach_to_their_parent_service() -> None:
    r = pb.HTTPRoute(namespace="default", name="split",
                     parents=[pb.RouteParent(namespace="default", service="web")],
                     rules=[pb.RouteRule(
                         matches=[pb.RouteMatch(path=pb.StringMatch(
                             type=pb.StringMatch.PREFIX, value="/v2"))],
                         backends=[pb.BackendRef(namespace="default", name="v2", weight=1)],
                         timeout_ms=500, backend_timeout_ms=200,
                         retry=pb.RetryPolicy(attempts=3, codes=[503]))])
    cfg = build(snap(routes=[r]))
    sel = cfg.routes["default/web"].select(RequestHead("GET", "/v2/a", "web", []))
    assert sel is not None
    rule = sel.rule
    assert rule.name == "default/split#0"
    assert rule.timeouts.request_ms == 500 and rule.timeouts.backend_ms == 200
    assert rule.retry is not None and rule.retry.attempts == 3
    assert cfg.routes["default/web"].select(RequestHead("GET", "/other", "web", [])) is None
    assert len(cfg.routes["default/api"]) == 1  # untouched: default route


def test_bad_regex_is_named() -> None:
    r = pb.HTTPRoute(namespace="default", name="bad",
                     parents=[pb.RouteParent(namespace="default", service="web")],
                     rules=[pb.RouteRule(matches=[pb.RouteMatch(path=pb.StringMatch(
                         type=pb.StringMatch.REGEX, value="(unclosed"))])])
    with pytest.raises(RouteConfigError) as e:
        build(snap(routes=[r]))
    assert "HTTPRoute default/bad" in str(e.value)
    assert "spec.rules[0].matches[0].path.value" in str(e.value)


def test_backend_timeout_above_request_timeout_is_refused() -> None:
    r = pb.HTTPRoute(namespace="default", name="t",
                     parents=[pb.RouteParent(namespace="default", service="web")],
                     rules=[pb.RouteRule(timeout_ms=100, backend_timeout_ms=200)])
    with pytest.raises(RouteConfigError, match="backendRequest"):
        build(snap(routes=[r]))


def test_traffic_policy_settings() -> None:
    t = pb.TrafficPolicy(
        namespace="default", name="tp", services=["default/web"],
        retry_budget=pb.RetryBudget(percent=25, min_retries_per_second=3),
        outlier_detection=pb.OutlierDetection(consecutive_5xx=2, interval_ms=500,
                                              base_ejection_time_ms=5000,
                                              max_ejection_percent=30),
        connection_pool=pb.ConnectionPool(max_connections=4),
        rate_limit=pb.RateLimit(requests_per_unit=120, unit_seconds=60),
        fault_injection=pb.FaultInjection(delay_percent=10, delay_ms=50))
    cfg = build(snap(traffic=[t]))
    s = cfg.traffic_for("default/web")
    assert s.policy == "default/tp" and s.retry_budget == (25, 3)
    assert s.outlier is not None and s.outlier.interval_s == 0.5 and s.outlier.base_ejection_s == 5
    assert s.limits is not None and s.limits.max_connections == 4
    assert s.limits.max_pending_requests is None
    assert s.rate_limit is not None and s.rate_limit.requests_per_second == 2.0
    assert s.rate_limit.burst == 120
    assert s.faults is not None and s.faults.delay_ms == 50 and s.faults.abort_status == 0
    assert cfg.traffic_for("default/api").policy == ""


def test_bad_abort_status_is_named() -> None:
    t = pb.TrafficPolicy(namespace="default", name="f", services=["default/web"],
                         fault_injection=pb.FaultInjection(abort_status=99, abort_percent=1))
    with pytest.raises(RouteConfigError, match=r"TrafficPolicy default/f: .*httpStatus"):
        build(snap(traffic=[t]))


def test_authorization_targets() -> None:
    to_web = pb.Authorization(namespace="default", name="web-only", action=pb.DENY,
                              targets=[pb.PolicyTarget(kind="Service", namespace="default",
                                                       name="web")],
                              rules=[pb.Rule(operations=[pb.Operation(methods=["post"])])])
    to_gateway = pb.Authorization(namespace="default", name="all", action=pb.ALLOW,
                                  targets=[pb.PolicyTarget(kind="Gateway", name="wp")],
                                  rules=[pb.Rule()])
    cfg = build(snap(authz=[to_web, to_gateway]))
    assert [p.key for p in cfg.authz["default/web"]] == ["default/web-only", "default/all"]
    assert [p.key for p in cfg.authz["default/api"]] == ["default/all"]
    assert cfg.authz["default/web"][0].rules[0].operations[0].methods == ("POST",)


def test_bad_ip_block_makes_the_policy_deny_all() -> None:
    """The snapshot is kept (its routes are fine); the policy is enforced as a deny of
    everything it selects, never skipped (mesh/authz/compile.py)."""
    a = pb.Authorization(namespace="default", name="ips", action=pb.ALLOW,
                         rules=[pb.Rule(sources=[pb.Source(ip_blocks=["10.0.0.0/33"])])])
    (policy,) = build(snap(authz=[a])).authz["default/web"]
    assert policy.action == "DENY" and "spec.rules[0].from[0].source.ipBlocks[0]" in policy.error


@pytest.mark.parametrize(("value", "want"), [
    ("10.0.0.1:80", ("10.0.0.1", 80)), ("web", ("web", None)), ("[fd00::1]:8080",
                                                               ("fd00::1", 8080)),
    ("fd00::1", ("fd00::1", None)), ("web:http", ("web", None)),
])
def test_split_hostport(value: str, want: tuple[str, int | None]) -> None:
    assert split_hostport(value) == want

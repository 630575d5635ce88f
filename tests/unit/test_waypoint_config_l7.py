"""WAYPOINT snapshot -> decision objects for the L7 config fields: URL rewrite,
per-source rate limit, non-idempotent retries, gateway-error ejection. The chain
tests start from YAML and go through the controller's snapshot builder, so a field
dropped anywhere on the way fails here."""

from __future__ import annotations

import pytest

from controller.snapshots import route, traffic_policy
from mesh.api import config_pb2 as pb
from mesh.config import HTTPRoute, TrafficPolicy, parse_documents
from waypoint.config import WaypointConfig, build
from waypoint.errors import RouteConfigError
from waypoint.messages import RequestHead
from waypoint.outlier import OutlierDetector
from waypoint.ratelimit import RateLimiter


def svc(name: str) -> pb.Service:
    return pb.Service(
        namespace="demo", name=name, hostnames=[name, f"{name}.demo.svc.cluster.local"],
        ports=[pb.ServicePort(name="http", port=80, target_port=8080)],
        endpoints=[pb.Endpoint(workload_uid="u1", addresses=["10.0.0.5"],
                               ports=[pb.EndpointPort(service_port=80, target_port=8080)])])


def snap(routes: list[pb.HTTPRoute] | None = None,
         traffic: list[pb.TrafficPolicy] | None = None) -> pb.Snapshot:
    return pb.Snapshot(
        version="v1", kind=pb.WAYPOINT,
        waypoint=pb.WaypointInfo(namespace="demo", name="wp", services=["demo/web"]),
        services=[svc("web")], routes=routes or [], traffic_policies=traffic or [])


def from_yaml(text: str) -> WaypointConfig:
    routes, policies = [], []
    for d in parse_documents(text, "chain.yaml"):
        if isinstance(d.resource, HTTPRoute):
            routes.append(route(d.resource))
        elif isinstance(d.resource, TrafficPolicy):
            policies.append(traffic_policy(d.resource))
    return build(snap(routes, policies))


def rewritten(cfg: WaypointConfig, target: str, authority: str = "web") -> RequestHead:
    req = RequestHead("GET", target, authority, [])
    sel = cfg.routes["demo/web"].select(req, 80)
    assert sel is not None
    rewrite = sel.rule.filters.rewrite
    assert rewrite is not None
    rewrite.apply(req, sel.match.path)
    return req


ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: demo}
spec:
  parentRefs: [{kind: Service, group: "", name: web}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /shop}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: catalog.demo.svc.cluster.local
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /}
  - matches: [{path: {type: PathPrefix, value: /api/v1}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
  - matches: [{path: {type: Exact, value: /old}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /new/place}}
"""


@pytest.mark.parametrize(("target", "want_target", "want_host"), [
    ("/shop/items?x=1", "/items?x=1", "catalog.demo.svc.cluster.local"),
    ("/shop", "/", "catalog.demo.svc.cluster.local"),
    ("/shop/", "/", "catalog.demo.svc.cluster.local"),
    ("/api/v1/users/7", "/v2/users/7", "web"),
    ("/api/v1", "/v2", "web"),
    ("/old?q=a", "/new/place?q=a", "web"),
])
def test_url_rewrite_from_yaml(target: str, want_target: str, want_host: str) -> None:
    req = rewritten(from_yaml(ROUTE), target)
    assert (req.target, req.authority) == (want_target, want_host)


def _route(rewrite: pb.UrlRewrite, match: pb.StringMatch | None = None) -> pb.HTTPRoute:
    rule = pb.RouteRule(url_rewrite=rewrite)
    if match is not None:
        rule.matches.append(pb.RouteMatch(path=match))
    return pb.HTTPRoute(namespace="demo", name="bad",
                        parents=[pb.RouteParent(namespace="demo", service="web")], rules=[rule])


@pytest.mark.parametrize(("rewrite", "match", "where"), [
    (pb.UrlRewrite(prefix_match="/x"), pb.StringMatch(type=pb.StringMatch.EXACT, value="/a"),
     "spec.rules[0].filters.urlRewrite.path.replacePrefixMatch"),
    (pb.UrlRewrite(prefix_match="/x"), pb.StringMatch(type=pb.StringMatch.REGEX, value="/a.*"),
     "spec.rules[0].filters.urlRewrite.path.replacePrefixMatch"),
    (pb.UrlRewrite(full_path="relative"), None,
     "spec.rules[0].filters.urlRewrite.path.replaceFullPath"),
    (pb.UrlRewrite(hostname="bad host"), None, "spec.rules[0].filters.urlRewrite.hostname"),
])
def test_unusable_rewrite_is_refused_with_its_field(rewrite: pb.UrlRewrite,
                                                    match: pb.StringMatch | None,
                                                    where: str) -> None:
    with pytest.raises(RouteConfigError) as e:
        build(snap([_route(rewrite, match)]))
    assert str(e.value).startswith(f"HTTPRoute demo/bad: {where}:")


def test_empty_rewrite_message_is_no_rewrite() -> None:
    cfg = build(snap([_route(pb.UrlRewrite())]))
    sel = cfg.routes["demo/web"].select(RequestHead("GET", "/a", "web", []))
    assert sel is not None and sel.rule.filters.rewrite is None


POLICY = """
apiVersion: ambientmesh.io/v1alpha1
kind: TrafficPolicy
metadata: {name: tp, namespace: demo}
spec:
  targetRefs: [{kind: Service, name: web}]
"""


def test_per_source_rate_limit_from_yaml() -> None:
    cfg = from_yaml(POLICY + "  rateLimit: {requestsPerUnit: 2, perSourceIdentity: true}\n")
    rl = cfg.traffic_for("demo/web").rate_limit
    assert rl is not None and rl.per_source and rl.burst == 2
    limiter = RateLimiter()
    a, b = "spiffe://cluster.local/ns/demo/sa/a", "spiffe://cluster.local/ns/demo/sa/b"
    assert [limiter.allow("r", rl, a, 0.0)[0] for _ in range(3)] == [True, True, False]
    # Another identity has its own full bucket.
    assert [limiter.allow("r", rl, b, 0.0)[0] for _ in range(3)] == [True, True, False]


def test_shared_rate_limit_stays_the_default() -> None:
    cfg = from_yaml(POLICY + "  rateLimit: {requestsPerUnit: 2}\n")
    rl = cfg.traffic_for("demo/web").rate_limit
    assert rl is not None and not rl.per_source
    limiter = RateLimiter()
    assert limiter.allow("r", rl, "a", 0.0)[0] and limiter.allow("r", rl, "b", 0.0)[0]
    assert not limiter.allow("r", rl, "c", 0.0)[0]


@pytest.mark.parametrize(("spec", "want"), [
    ("  retry: {allowNonIdempotent: true}\n", True),
    ("  retry: {allowNonIdempotent: false}\n", False),
    ("  retryBudget: {percent: 10}\n", False),
])
def test_non_idempotent_retries_from_yaml(spec: str, want: bool) -> None:
    assert from_yaml(POLICY + spec).traffic_for("demo/web").retry_non_idempotent is want


def test_gateway_errors_only_from_yaml() -> None:
    cfg = from_yaml(POLICY + "  outlierDetection: {consecutive5xxErrors: 0, "
                    "consecutiveGatewayErrors: 2, maxEjectionPercent: 50}\n")
    od = cfg.traffic_for("demo/web").outlier
    assert od is not None
    assert (od.consecutive_5xx, od.consecutive_gateway_errors, od.max_ejection_percent) == \
        (0, 2, 50)
    det = OutlierDetector(od)
    # Application 500s never eject when 5xx ejection is off...
    assert all(det.record("a", 500, 0.0, 4) is None for _ in range(20))
    # ...two gateway errors in a row do; a 500 between two 502s resets the streak.
    assert det.record("b", 502, 0.0, 4) is None
    assert det.record("b", 500, 0.0, 4) is None
    assert det.record("b", 503, 0.0, 4) is None
    ejection = det.record("b", None, 0.0, 4)
    assert ejection is not None and ejection.endpoint == "b"


def test_gateway_threshold_below_5xx_threshold() -> None:
    cfg = from_yaml(POLICY + "  outlierDetection: {consecutive5xxErrors: 4, "
                    "consecutiveGatewayErrors: 2}\n")
    od = cfg.traffic_for("demo/web").outlier
    assert od is not None
    det = OutlierDetector(od)
    assert [det.record("a", 500, 0.0, 2) is None for _ in range(3)] == [True] * 3
    assert det.record("a", 500, 0.0, 2) is not None  # 4th 5xx in a row
    det2 = OutlierDetector(od)
    assert det2.record("b", 504, 0.0, 2) is None
    assert det2.record("b", 504, 0.0, 2) is not None  # 2nd gateway error in a row


def test_unset_5xx_threshold_means_five() -> None:
    """Snapshots written without the field (older controllers) keep the default 5."""
    t = pb.TrafficPolicy(namespace="demo", name="old", services=["demo/web"],
                         outlier_detection=pb.OutlierDetection(interval_ms=100))
    od = build(snap(traffic=[t])).traffic_for("demo/web").outlier
    assert od is not None and od.consecutive_5xx == 5 and od.consecutive_gateway_errors == 0


def test_no_threshold_at_all_is_refused() -> None:
    t = pb.TrafficPolicy(namespace="demo", name="never", services=["demo/web"],
                         outlier_detection=pb.OutlierDetection(consecutive_5xx=0))
    with pytest.raises(RouteConfigError) as e:
        build(snap(traffic=[t]))
    assert str(e.value).startswith(
        "TrafficPolicy demo/never: spec.outlierDetection.consecutiveGatewayErrors:")

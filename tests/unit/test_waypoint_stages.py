"""Each stage of the waypoint's request pipeline (waypoint/pipeline.py), driven alone.

As linkerd2-proxy tests each layer with a mock inner service, every test here calls
one stage with an Exchange prepared from a real config (waypoint.config.build of a
WAYPOINT snapshot) and an in-memory inner service that records what reached it and
answers what the test scripts — no sockets, no processes. A stage that answers on
its own (400, 403, 404, 429, 503, 504...) must not call the inner service; one that
passes the request on must pass what the next stage relies on.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import pytest

from mesh.api import config_pb2 as pb
from waypoint.accesslog import AccessLog
from waypoint.config import WaypointConfig, build
from waypoint.errors import LimitExceededError, UpstreamConnectError, UpstreamResetError
from waypoint.http1 import DownstreamInfo
from waypoint.limits import OVERFLOW_HEADER, ConnectionLimits
from waypoint.messages import (
    BodySource,
    BytesBody,
    EmptyBody,
    ReplayableBody,
    RequestHead,
    Response,
    header,
)
from waypoint.metrics import WaypointMetrics
from waypoint.pipeline import (
    RATE_LIMIT_HEADER,
    Exchange,
    Runtime,
    apply_filters,
    authorize,
    balance,
    build_pipeline,
    forward,
    inject_faults,
    normalize,
    rate_limit,
    resolve_service,
    retry_and_timeout,
    route,
)
from waypoint.state import WaypointState
from waypoint.upstream import Endpoint, UpstreamPool

pytestmark = pytest.mark.anyio

SLEEP = "spiffe://cluster.local/ns/shop/sa/sleep"
WEB_VIP, API_VIP, SHADOW_VIP = "10.96.0.10", "10.96.0.20", "10.96.0.30"
WEB_PODS = ("10.0.0.5", "10.0.0.6", "10.0.0.7")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- a real config ----------------------------------------------------------------------


def service(name: str, vip: str, pods: Sequence[str], app_protocol: str = "") -> pb.Service:
    return pb.Service(
        namespace="shop", name=name, vips=[vip],
        hostnames=[name, f"{name}.shop.svc.cluster.local"],
        ports=[pb.ServicePort(name="http", port=80, target_port=8080,
                              app_protocol=app_protocol)],
        endpoints=[pb.Endpoint(workload_uid=f"{name}-{i}", addresses=[ip], enrolled=True,
                               identity=f"spiffe://cluster.local/ns/shop/sa/{name}",
                               ports=[pb.EndpointPort(service_port=80, target_port=8080)])
                   for i, ip in enumerate(pods)])


def config(*, rules: Sequence[pb.RouteRule] = (), traffic: pb.TrafficPolicy | None = None,
           policies: Sequence[pb.Authorization] = (), api_protocol: str = "") -> WaypointConfig:
    routes = [pb.HTTPRoute(namespace="shop", name="web-route", rules=list(rules),
                           parents=[pb.RouteParent(namespace="shop", service="web")])] \
        if rules else []
    if traffic is not None:
        traffic.services[:] = ["shop/web"]
    return build(pb.Snapshot(
        version="1", kind=pb.WAYPOINT, trust_domain="cluster.local",
        waypoint=pb.WaypointInfo(namespace="shop", name="wp",
                                 services=["shop/web", "shop/api"]),
        services=[service("web", WEB_VIP, WEB_PODS),
                  service("api", API_VIP, ("10.0.1.5",), api_protocol),
                  service("shadow", SHADOW_VIP, ("10.0.2.5",)),
                  service("empty", "10.96.0.40", ())],
        routes=routes, traffic_policies=[traffic] if traffic is not None else [],
        authorizations=list(policies)))


def backend(name: str, weight: int = 1) -> pb.BackendRef:
    return pb.BackendRef(namespace="shop", name=name, port=80, weight=weight)


# -- in-memory inner services -----------------------------------------------------------


Answer = Response | BaseException | Callable[[Exchange], Awaitable[Response]]


@dataclass
class Inner:
    """The rest of the pipeline: records each exchange that reached it (with the head
    as it was then) and answers from a script (the last answer repeats)."""

    answers: list[Answer] = field(default_factory=lambda: [ok()])
    seen: list[Exchange] = field(default_factory=list)
    heads: list[RequestHead] = field(default_factory=list)

    async def __call__(self, ex: Exchange) -> Response:
        self.seen.append(ex)
        self.heads.append(ex.head.copy())
        answer = self.answers[min(len(self.seen), len(self.answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, Response):
            return Response(answer.status, list(answer.headers), BytesBody(b"answer"),
                            flags=list(answer.flags))
        return await answer(ex)


def ok(status: int = 200, flags: Sequence[str] = ()) -> Response:
    return Response(status, [("content-length", "6")], flags=list(flags))


@dataclass
class Upstream:
    """What the pool hands requests to: the backend pods, in memory."""

    answers: list[Answer] = field(default_factory=lambda: [ok()])
    calls: list[tuple[str, ConnectionLimits | None, Endpoint, str, RequestHead, bytes]] = \
        field(default_factory=list)

    async def request(self, group: str, limits: ConnectionLimits | None, endpoint: Endpoint,
                      protocol: str, head: RequestHead, body: BodySource) -> Response:
        data = b"".join([chunk async for chunk in body.chunks()])
        self.calls.append((group, limits, endpoint, protocol, head, data))
        answer = self.answers[min(len(self.calls), len(self.answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, Response)
        return answer


def runtime(cfg: WaypointConfig, *, pool: Upstream | None = None,
            background: anyio.abc.TaskGroup | None = None,
            clock: Callable[[], float] | None = None) -> Runtime:
    state = WaypointState(cfg, random.Random(1), clock or (lambda: 0.0))
    return Runtime(state, cast(UpstreamPool, pool or Upstream()), cast(Any, background),
                   WaypointMetrics(), AccessLog(None))


def exchange(method: str = "GET", target: str = "/", *, host: str = "web",
             destination: str | None = f"{WEB_VIP}:80", principal: str | None = SLEEP,
             body: bytes = b"", headers: Sequence[tuple[str, str]] = ()) -> Exchange:
    source: BodySource = BytesBody(body) if body else EmptyBody()
    head = RequestHead(method, target, host, list(headers), has_body=bool(body))
    return Exchange(head, ReplayableBody(source, empty=not body),
                    DownstreamInfo(principal, destination, "10.0.9.9:40000"), 0.0)


def routed(rt: Runtime, ex: Exchange, service_key: str = "shop/web") -> Exchange:
    """What the stages before balance / filters / retries leave in the exchange, taken
    from the config directly (not by running them)."""
    ex.service, ex.port = rt.state.config.services[service_key], 80
    sel = rt.state.config.routes[service_key].select(ex.head, 80)
    assert sel is not None
    ex.selection, ex.backend = sel, sel.rule.backends[0]
    return ex


def balanced(rt: Runtime, ex: Exchange, service_key: str = "shop/web") -> Exchange:
    routed(rt, ex, service_key)
    assert ex.backend is not None
    ex.endpoint = rt.state.config.services[ex.backend.service].endpoints[80][0]
    return ex


# -- normalize --------------------------------------------------------------------------


async def test_normalize_passes_on_the_normalized_method_and_path() -> None:
    inner = Inner()
    resp = await normalize(runtime(config()), exchange("GET", "/a/./b/../c//d?q=%2F"),
                           inner)
    assert resp.status == 200
    assert (inner.heads[0].method, inner.heads[0].target) == ("GET", "/a/c/d?q=%2F")


@pytest.mark.parametrize(("method", "target"), [
    ("GET", "/admin%2Fsecret"), ("GET", "/a/%00"), ("GET", "*"), ("GET", "/x%zz"),
    ("get", "/"),  # methods are case-sensitive: "get" is not GET to a policy
])
async def test_normalize_refuses_what_it_cannot_normalize_without_calling_on(
        method: str, target: str) -> None:
    inner, ex = Inner(), exchange(method, target)
    resp = await normalize(runtime(config()), ex, inner)
    assert (resp.status, resp.flags) == (400, ["DPE"])
    assert inner.seen == [] and ex.reason.startswith("request refused")


# -- resolve the service ------------------------------------------------------------------


@pytest.mark.parametrize(("destination", "host", "key", "port"), [
    (f"{API_VIP}:80", "whatever", "shop/api", 80),  # the tunnel's destination first
    (None, "api.shop.svc.cluster.local:80", "shop/api", 80),  # then the Host
    (None, "WEB.", "shop/web", 80),  # case and trailing dot, port from the service
    (f"{WEB_PODS[0]}:8080", "web", "shop/web", 8080),  # a pod address: the port it named
])
async def test_resolve_service_picks_the_served_service(destination: str | None, host: str,
                                                        key: str, port: int) -> None:
    inner = Inner()
    await resolve_service(runtime(config()), exchange(host=host, destination=destination),
                          inner)
    assert inner.seen[0].service is not None
    assert (inner.seen[0].service.key, inner.seen[0].port) == (key, port)


async def test_resolve_service_404s_a_service_this_waypoint_does_not_serve() -> None:
    inner = Inner()
    # "shadow" exists in the snapshot but is not one of the waypoint's services
    resp = await resolve_service(runtime(config()),
                                 exchange(host="shadow", destination=None), inner)
    assert (resp.status, resp.flags, inner.seen) == (404, ["NR"], [])


# -- authorize --------------------------------------------------------------------------


def deny_delete() -> pb.Authorization:
    return pb.Authorization(namespace="shop", name="no-delete", action=pb.DENY,
                            targets=[pb.PolicyTarget(kind="Service", namespace="shop",
                                                     name="web")],
                            rules=[pb.Rule(operations=[pb.Operation(methods=["delete"])])])


async def test_authorize_403s_a_denied_request_and_passes_the_rest() -> None:
    rt = runtime(config(policies=[deny_delete()]))
    inner = Inner()
    ex = routed(rt, exchange("DELETE", "/cart"))
    resp = await authorize(rt, ex, inner)
    assert (resp.status, resp.flags, inner.seen) == (403, ["RBAC"], [])
    assert "shop/no-delete" in ex.reason
    assert (await authorize(rt, routed(rt, exchange("GET", "/cart")), inner)).status == 200
    assert len(inner.seen) == 1


async def test_authorize_applies_only_the_policies_of_the_requests_service() -> None:
    rt = runtime(config(policies=[deny_delete()]))
    inner = Inner()
    ex = exchange("DELETE", "/x", host="api", destination=f"{API_VIP}:80")
    ex.service, ex.port = rt.state.config.services["shop/api"], 80
    assert (await authorize(rt, ex, inner)).status == 200


async def test_authorize_fails_closed_for_an_allow_policy_without_the_caller() -> None:
    """An ALLOW policy lets in only whom it names: no peer identity is denied."""
    allow = pb.Authorization(
        namespace="shop", name="sleep-only", action=pb.ALLOW,
        targets=[pb.PolicyTarget(kind="Service", namespace="shop", name="web")],
        rules=[pb.Rule(sources=[pb.Source(principals=["cluster.local/ns/shop/sa/sleep"])])])
    rt = runtime(config(policies=[allow]))
    inner = Inner()
    assert (await authorize(rt, routed(rt, exchange(principal=SLEEP)), inner)).status == 200
    resp = await authorize(rt, routed(rt, exchange(principal=None)), inner)
    assert (resp.status, len(inner.seen)) == (403, 1)


# -- route ------------------------------------------------------------------------------


def two_rules() -> list[pb.RouteRule]:
    return [
        pb.RouteRule(name="api", matches=[pb.RouteMatch(path=pb.StringMatch(
            type=pb.StringMatch.PREFIX, value="/api"))], backends=[backend("api")]),
        pb.RouteRule(name="post", matches=[pb.RouteMatch(method="POST", path=pb.StringMatch(
            type=pb.StringMatch.EXACT, value="/only-post"))], backends=[backend("web")]),
        pb.RouteRule(name="gone", matches=[pb.RouteMatch(path=pb.StringMatch(
            type=pb.StringMatch.PREFIX, value="/gone"))], backends=[backend("nowhere")]),
        pb.RouteRule(name="drained", matches=[pb.RouteMatch(path=pb.StringMatch(
            type=pb.StringMatch.PREFIX, value="/drained"))], backends=[backend("web", 0)]),
    ]


async def test_route_selects_the_matching_rule_and_its_backend() -> None:
    rt = runtime(config(rules=two_rules()))
    inner = Inner()
    ex = exchange("GET", "/api/items")
    ex.service, ex.port = rt.state.config.services["shop/web"], 80
    assert (await route(rt, ex, inner)).status == 200
    assert inner.seen[0].backend is not None
    assert (inner.seen[0].backend.service, inner.seen[0].route_name) == \
        ("shop/api", "shop/web-route#0")


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/only-post", 404),  # the method is part of the match
    ("GET", "/elsewhere", 404),  # a route exists: no default route any more
    ("GET", "/gone/x", 500),  # matched, but its backend is not in the snapshot
    ("GET", "/drained/x", 500),  # matched, but every backend has weight 0
])
async def test_route_answers_itself_when_no_rule_or_backend_fits(method: str, path: str,
                                                                 status: int) -> None:
    rt = runtime(config(rules=two_rules()))
    inner = Inner()
    ex = exchange(method, path)
    ex.service, ex.port = rt.state.config.services["shop/web"], 80
    resp = await route(rt, ex, inner)
    assert (resp.status, resp.flags, inner.seen) == (status, ["NR"], [])


async def test_a_service_without_routes_goes_to_itself() -> None:
    rt = runtime(config())
    inner = Inner()
    ex = exchange("PATCH", "/anything")
    ex.service, ex.port = rt.state.config.services["shop/web"], 80
    await route(rt, ex, inner)
    assert inner.seen[0].backend is not None and inner.seen[0].backend.service == "shop/web"
    assert inner.seen[0].route_name == "default"


# -- rate limit -------------------------------------------------------------------------


async def test_rate_limit_429s_beyond_the_burst_and_refills_with_time() -> None:
    now = [100.0]
    traffic = pb.TrafficPolicy(namespace="shop", name="tp", rate_limit=pb.RateLimit(
        requests_per_unit=2, unit_seconds=1, burst=2))
    rt = runtime(config(traffic=traffic), clock=lambda: now[0])
    inner = Inner()
    statuses = [(await rate_limit(rt, routed(rt, exchange()), inner)).status for _ in range(3)]
    assert statuses == [200, 200, 429] and len(inner.seen) == 2
    refused = await rate_limit(rt, routed(rt, exchange()), inner)
    assert header(refused.headers, RATE_LIMIT_HEADER) == "true"
    assert header(refused.headers, "retry-after") == "1" and refused.flags == ["RL"]
    now[0] += 0.5  # 2 per second: one token back
    assert (await rate_limit(rt, routed(rt, exchange()), inner)).status == 200


async def test_rate_limit_per_source_gives_each_caller_its_own_bucket() -> None:
    traffic = pb.TrafficPolicy(namespace="shop", name="tp", rate_limit=pb.RateLimit(
        requests_per_unit=1, unit_seconds=60, burst=1, per_source=True))
    rt = runtime(config(traffic=traffic))
    inner = Inner()
    other = "spiffe://cluster.local/ns/shop/sa/other"
    got = [(await rate_limit(rt, routed(rt, exchange(principal=p)), inner)).status
           for p in (SLEEP, SLEEP, other)]
    assert got == [200, 429, 200]


# -- fault injection --------------------------------------------------------------------


async def test_faults_abort_without_calling_on_and_delay_before_calling_on() -> None:
    abort = pb.TrafficPolicy(namespace="shop", name="tp", fault_injection=pb.FaultInjection(
        abort_percent=100, abort_status=418))
    rt = runtime(config(traffic=abort))
    inner = Inner()
    resp = await inject_faults(rt, routed(rt, exchange()), inner)
    assert (resp.status, resp.flags, inner.seen) == (418, ["FI"], [])

    delay = pb.TrafficPolicy(namespace="shop", name="tp", fault_injection=pb.FaultInjection(
        delay_percent=100, delay_ms=30))
    rt = runtime(config(traffic=delay))
    ex = routed(rt, exchange())
    start = anyio.current_time()
    assert (await inject_faults(rt, ex, inner)).status == 200
    assert anyio.current_time() - start >= 0.03 and ex.flags == ["DI"]


# -- filters ----------------------------------------------------------------------------


async def test_filters_change_the_request_going_in_and_the_response_coming_out() -> None:
    rule = pb.RouteRule(
        name="f", matches=[pb.RouteMatch(path=pb.StringMatch(type=pb.StringMatch.PREFIX,
                                                             value="/old"))],
        backends=[backend("web")],
        request_headers=pb.HeaderModifier(set=[pb.HeaderValue(name="x-env", value="prod")],
                                          add=[pb.HeaderValue(name="x-via", value="wp")],
                                          remove=["x-secret"]),
        response_headers=pb.HeaderModifier(set=[pb.HeaderValue(name="x-served-by",
                                                               value="wp")]),
        url_rewrite=pb.UrlRewrite(hostname="web.internal", prefix_match="/new"))
    rt = runtime(config(rules=[rule]))
    inner = Inner()
    ex = routed(rt, exchange("GET", "/old/page?x=1", headers=[
        ("x-env", "dev"), ("x-secret", "s"), ("x-via", "client")]))
    resp = await apply_filters(rt, ex, inner)
    sent = inner.heads[0]
    assert (sent.target, sent.authority) == ("/new/page?x=1", "web.internal")
    assert header(sent.headers, "x-env") == "prod" and header(sent.headers, "x-secret") is None
    assert [v for k, v in sent.headers if k == "x-via"] == ["client", "wp"]
    assert header(resp.headers, "x-served-by") == "wp"


async def test_a_mirror_sends_a_copy_after_the_primary_and_ignores_its_fate() -> None:
    rule = pb.RouteRule(name="m", backends=[backend("web")], mirrors=[pb.Mirror(
        backend=backend("shadow"), percent=100)])
    pool = Upstream(answers=[UpstreamConnectError("10.0.2.5:8080", "refused")])
    async with anyio.create_task_group() as tg:
        rt = runtime(config(rules=[rule]), pool=pool, background=tg)
        ex = routed(rt, exchange("POST", "/orders", body=b"order-1"))
        resp = await apply_filters(rt, ex, Inner([read_body]))
        assert resp.status == 200 and pool.calls == []  # not before the primary answered
    assert len(pool.calls) == 1
    group, _, endpoint, _, head, data = pool.calls[0]
    assert (group, endpoint.address, head.authority, data) == \
        ("mirror|shop/shadow", "10.0.2.5", "web-shadow", b"order-1")
    assert rt.mirrors_in_flight == 0


async def read_body(ex: Exchange) -> Response:
    """The primary backend: reads the request body, as forward's pool would."""
    async for _ in ex.body.attempt().chunks():
        pass
    return ok()


# -- retry and timeouts -----------------------------------------------------------------


def retry_rule(attempts: int = 2, *, timeout_ms: int = 0, backend_timeout_ms: int = 0
               ) -> pb.RouteRule:
    return pb.RouteRule(name="r", backends=[backend("web")], timeout_ms=timeout_ms,
                        backend_timeout_ms=backend_timeout_ms,
                        retry=pb.RetryPolicy(attempts=attempts, codes=[503], backoff_ms=1))


async def test_retries_a_retryable_status_then_returns_the_success() -> None:
    rt = runtime(config(rules=[retry_rule()]))
    avoided: list[str | None] = []

    async def pod(ex: Exchange) -> Response:
        """What balance does: note the host to avoid, then pick an endpoint."""
        avoided.append(ex.previous_host)
        ex.endpoint = rt.state.config.services["shop/web"].endpoints[80][ex.tries - 1]
        return ok(503 if ex.tries < 3 else 200)

    inner = Inner([pod])
    ex = routed(rt, exchange())
    assert (await retry_and_timeout(rt, ex, inner)).status == 200
    assert ex.tries == 3 and len(inner.seen) == 3
    # each retry tells balance which endpoint just failed (Envoy's previous_hosts)
    assert avoided == [None, f"{WEB_PODS[0]}:8080", f"{WEB_PODS[1]}:8080"]
    assert rt.metrics.retries.labels("web.shop.svc.cluster.local")._value.get() == 2


@pytest.mark.parametrize(("method", "answers", "tries"), [
    ("POST", [ok(503), ok(200)], 1),  # not idempotent: the first try may have had effects
    ("GET", [ok(500), ok(200)], 1),  # 500 is not among the retried codes
    ("GET", [ok(503, ["UO"]), ok(200)], 1),  # a local overflow is not retried
    ("GET", [ok(503)], 3),  # attempts exhausted: the last answer stands
])
async def test_retries_stop_where_the_policy_says(method: str, answers: list[Answer],
                                                  tries: int) -> None:
    rt = runtime(config(rules=[retry_rule()]))
    inner = Inner(answers)
    ex = routed(rt, exchange(method))
    first = answers[0]
    assert isinstance(first, Response)
    assert (await retry_and_timeout(rt, ex, inner)).status == first.status
    assert ex.tries == tries


async def test_an_exhausted_retry_budget_returns_the_failure_flagged() -> None:
    budget = pb.TrafficPolicy(namespace="shop", name="tp", retry_budget=pb.RetryBudget(
        percent=0, min_retries_per_second=0))
    rt = runtime(config(rules=[retry_rule()], traffic=budget))
    inner = Inner([ok(503), ok(200)])
    ex = routed(rt, exchange())
    resp = await retry_and_timeout(rt, ex, inner)
    assert (resp.status, resp.flags, ex.tries) == (503, ["URX"], 1)
    assert rt.metrics.retry_budget_exhausted.labels(
        "web.shop.svc.cluster.local")._value.get() == 1


async def hang(ex: Exchange) -> Response:
    await anyio.sleep(10)
    raise AssertionError("not cancelled")


async def test_the_request_timeout_answers_504_and_cancels_the_try() -> None:
    rt = runtime(config(rules=[retry_rule(timeout_ms=50)]))
    ex = routed(rt, exchange())
    with anyio.fail_after(5):
        resp = await retry_and_timeout(rt, ex, Inner([hang]))
    assert (resp.status, resp.flags) == (504, ["UT"]) and "50 ms" in ex.reason


async def test_a_per_try_timeout_is_retried_on_the_next_try() -> None:
    rt = runtime(config(rules=[retry_rule(backend_timeout_ms=30)]))
    inner = Inner([hang, ok(200)])
    ex = routed(rt, exchange())
    with anyio.fail_after(5):
        assert (await retry_and_timeout(rt, ex, inner)).status == 200
    assert ex.tries == 2


async def test_a_request_body_too_large_to_keep_is_not_retried() -> None:
    rt = runtime(config(rules=[retry_rule()]))
    ex = routed(rt, exchange("PUT", body=b"x" * 64))
    ex.body = ReplayableBody(BytesBody(b"x" * 64), limit=16)
    async for _ in ex.body.attempt().chunks():  # the first try streamed it through
        pass
    inner = Inner([ok(503), ok(200)])
    assert (await retry_and_timeout(rt, ex, inner)).status == 503 and ex.tries == 1


# -- balance ----------------------------------------------------------------------------


async def test_balance_takes_endpoints_in_turn_and_avoids_the_previous_host() -> None:
    rt = runtime(config())
    inner = Inner()
    picked = []
    for _ in range(6):
        await balance(rt, routed(rt, exchange()), inner)
        assert inner.seen[-1].endpoint is not None
        picked.append(inner.seen[-1].endpoint.address)
    assert sorted(picked) == sorted(WEB_PODS * 2)
    assert all(a != b for a, b in itertools.pairwise(picked))
    for _ in range(3):  # a retry after a failure on WEB_PODS[0] goes elsewhere
        ex = routed(rt, exchange())
        ex.previous_host = f"{WEB_PODS[0]}:8080"
        await balance(rt, ex, inner)
        assert inner.seen[-1].endpoint is not None
        assert inner.seen[-1].endpoint.address != WEB_PODS[0]


async def test_balance_503s_a_backend_without_endpoints() -> None:
    rt = runtime(config(rules=[pb.RouteRule(name="e", backends=[backend("empty")])]))
    inner = Inner()
    resp = await balance(rt, routed(rt, exchange()), inner)
    assert (resp.status, resp.flags, inner.seen) == (503, ["UH"], [])


async def test_balance_ejects_an_endpoint_that_fails_and_stops_sending_to_it() -> None:
    outlier = pb.TrafficPolicy(namespace="shop", name="tp", outlier_detection=pb.OutlierDetection(
        consecutive_5xx=1, base_ejection_time_ms=60_000, max_ejection_percent=100))
    rt = runtime(config(traffic=outlier))

    async def bad_pod(ex: Exchange) -> Response:
        assert ex.endpoint is not None
        return ok(503 if ex.endpoint.address == WEB_PODS[1] else 200)

    inner = Inner([bad_pod])
    for _ in range(3):  # one round: the bad pod answers 503 once
        await balance(rt, routed(rt, exchange()), inner)
    before = len(inner.seen)
    for _ in range(6):
        await balance(rt, routed(rt, exchange()), inner)
    after = [e.endpoint.address for e in inner.seen[before:] if e.endpoint is not None]
    assert WEB_PODS[1] not in after and len(after) == 6
    assert rt.metrics.ejected.labels("web.shop.svc.cluster.local")._value.get() == 1


# -- forward ----------------------------------------------------------------------------


async def test_forward_hands_the_pool_the_endpoint_protocol_and_a_copy_of_the_head() -> None:
    pool = Upstream()
    rt = runtime(config(api_protocol="http2"), pool=pool)
    ex = balanced(rt, exchange("POST", "/p", body=b"hello"))
    assert (await forward(rt, ex)).status == 200
    group, _, endpoint, protocol, head, data = pool.calls[0]
    assert (group, endpoint.key, protocol, data) == ("shop/web", f"{WEB_PODS[0]}:8080", "h1",
                                                      b"hello")
    assert head is not ex.head and head.target == "/p"

    grpc = balanced(rt, exchange("POST", "/pkg.Svc/Call", headers=[
        ("content-type", "application/grpc")]))
    await forward(rt, grpc)
    assert pool.calls[-1][3] == "h2"  # gRPC needs HTTP/2
    api = balanced(rt, exchange(host="api", destination=f"{API_VIP}:80"), "shop/api")
    await forward(rt, api)
    assert pool.calls[-1][3] == "h2"  # appProtocol http2


@pytest.mark.parametrize(("error", "flag"), [
    (LimitExceededError("max_pending_requests", "shop/web"), "UO"),
    (UpstreamConnectError("10.0.0.5:8080", "connection refused"), "UF"),
    (UpstreamResetError("10.0.0.5:8080", "reset"), "UR"),
])
async def test_forward_turns_upstream_failures_into_503s(error: Exception, flag: str) -> None:
    rt = runtime(config(), pool=Upstream(answers=[error]))
    ex = balanced(rt, exchange())
    resp = await forward(rt, ex)
    assert (resp.status, resp.flags) == (503, [flag]) and ex.reason == str(error)
    if flag == "UO":
        assert header(resp.headers, OVERFLOW_HEADER) == "max_pending_requests"


async def test_forward_passes_the_services_connection_limits() -> None:
    pool = Upstream()
    limited = pb.TrafficPolicy(namespace="shop", name="tp", connection_pool=pb.ConnectionPool(
        max_connections=3))
    rt = runtime(config(traffic=limited), pool=pool)
    await forward(rt, balanced(rt, exchange()))
    assert pool.calls[0][1] is rt.state.limits("shop/web") and pool.calls[0][1] is not None



# -- the assembled pipeline ---------------------------------------------------------------


async def test_the_assembled_pipeline_runs_the_stages_in_their_documented_order() -> None:
    """normalize -> resolve -> authorize -> route -> rate limit -> ... -> forward: a
    request refused early never reaches a later stage (a denied one spends no token)."""
    one_token = pb.TrafficPolicy(namespace="shop", name="tp", rate_limit=pb.RateLimit(
        requests_per_unit=1, unit_seconds=3600, burst=1))
    pool = Upstream()
    rt = runtime(config(policies=[deny_delete()], traffic=one_token), pool=pool)
    handle = build_pipeline(rt)
    info = DownstreamInfo(SLEEP, f"{WEB_VIP}:80", "10.0.9.9:40000")

    async def call(method: str, target: str) -> int:
        resp = await handle(RequestHead(method, target, "web", []), EmptyBody(), info)
        await resp.body.aclose()  # the end of the response is when it is observed
        return resp.status

    assert await call("DELETE", "/cart") == 403  # authorize, before the rate limit
    assert await call("GET", "/a%2Fb") == 400  # normalize, before everything
    assert await call("GET", "/x/../cart") == 200  # the one token
    assert await call("GET", "/cart") == 429
    assert [(c[0], c[4].target) for c in pool.calls] == [("shop/web", "/cart")]
    exposition = rt.metrics.exposition().decode()
    for code in ("400", "403", "200", "429"):
        assert f'response_code="{code}"' in exposition

"""The request pipeline: an ordered list of stages, assembled in `build_pipeline` and
read top to bottom. Each stage gets the exchange and the rest of the pipeline; it
may answer itself (403, 404, 429, 503, 504...) or call the rest and look at the
response. Decisions are made by the sans-I/O objects (authz, routing, weighted,
ratelimit, faults, retry, outlier, limits); stages only apply them.

    observe -> normalize -> resolve service -> authorize -> route -> rate limit -> faults
            -> filters (headers, rewrite, mirror) -> retry + timeouts -> balance -> forward
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import anyio
import anyio.abc
import structlog

from mesh.http_paths import RequestNormalizationError, normalize_request
from mesh.telemetry.labels import (
    UNKNOWN,
    Party,
    PeerValues,
    ServiceRef,
    peer_values,
    source_party,
)
from waypoint.accesslog import AccessLog, AccessRecord, WallClock
from waypoint.authz import RequestFacts, evaluate
from waypoint.config import ServiceInfo, split_hostport
from waypoint.errors import LimitExceededError, UpstreamConnectError, UpstreamError
from waypoint.faults import decide_fault
from waypoint.http1 import DownstreamInfo, Handler, take_ready
from waypoint.limits import OVERFLOW_HEADER
from waypoint.messages import (
    BodySource,
    BytesBody,
    EmptyBody,
    Headers,
    ReplayableBody,
    RequestHead,
    Response,
    header,
    local_response,
)
from waypoint.metrics import RequestLabels, WaypointMetrics
from waypoint.otlp import OtlpExporter
from waypoint.routing import BackendTarget, Mirror, RouteSelection
from waypoint.state import WaypointState
from waypoint.tracing import Span, ensure_request_id, inject, start_span
from waypoint.upstream import Endpoint, UpstreamPool

log = structlog.get_logger("waypoint.pipeline")

RATE_LIMIT_HEADER = "x-ambient-ratelimited"
MIRROR_MAX_IN_FLIGHT = 64
RETRY_BUFFER = 1 << 20
PEER_LABELS_CACHE = 4096  # (caller, endpoint) pairs whose metric labels are kept
_NO_RESPONSE = frozenset({"UF", "UR"})  # flags of a try that got no response at all


@dataclass
class Exchange:
    """One request on its way through the stages."""

    head: RequestHead
    body: ReplayableBody
    info: DownstreamInfo
    started: float
    service: ServiceInfo | None = None
    port: int | None = None
    selection: RouteSelection | None = None
    backend: BackendTarget | None = None
    endpoint: Endpoint | None = None
    previous_host: str | None = None
    tries: int = 0
    span: Span | None = None
    request_id: str = ""
    reason: str = ""
    flags: list[str] = field(default_factory=list)

    @property
    def route_name(self) -> str:
        return self.selection.rule.name if self.selection else ""


Next = Callable[[Exchange], Awaitable[Response]]
Stage = Callable[[Exchange, Next], Awaitable[Response]]


@dataclass
class Runtime:
    """What stages share: decision state, the upstream pool, telemetry, and a task
    group for fire-and-forget work (mirrors) that the server owns."""

    state: WaypointState
    pool: UpstreamPool
    background: anyio.abc.TaskGroup
    metrics: WaypointMetrics
    access_log: AccessLog
    exporter: OtlpExporter | None = None
    mirrors_in_flight: int = 0
    clock: WallClock = field(default_factory=WallClock)
    _peer_labels: dict[tuple[str | None, str, int, int, str],
                       tuple[object, object, object, PeerLabels]] = field(default_factory=dict)

    def peer_labels(self, principal: str | None, source_ip: str, ep: Endpoint | None,
                    dest: ServiceInfo | None, authority: str) -> PeerLabels:
        """The metric labels of who called whom, the same for every request between
        one caller and one endpoint: computed once, then looked up (until the next
        snapshot, whose workloads, endpoints and services are new objects)."""
        workloads = self.state.config.workloads_by_ip
        key = (principal, source_ip, id(ep), id(dest), "" if dest else authority)
        held = self._peer_labels.get(key)
        if held is not None and held[0] is ep and held[1] is dest and held[2] is workloads:
            return held[3]
        caller = workloads.get(source_ip)
        if principal and caller is not None and caller.principal != principal:
            # Once per (caller, endpoint) while cached: a stale snapshot or a forged source.
            log.warning("caller address belongs to another identity: labelled by its "
                        "certificate only", address=source_ip, principal=principal,
                        workload=f"{caller.namespace}/{caller.workload}",
                        workload_identity=caller.principal)
        labels = peer_labels(principal, caller, ep, dest, authority, workloads)
        if len(self._peer_labels) >= PEER_LABELS_CACHE:
            self._peer_labels.clear()
        self._peer_labels[key] = (ep, dest, workloads, labels)
        return labels


def build_pipeline(rt: Runtime) -> Handler:
    """The whole request path, in order. The decisions that answer or pass without
    looking at the response (normalize, resolve, authorize, route, rate limit, faults)
    run as plain calls inside one stage, `decide`, in that order: the same functions
    the one-stage wrappers below call (and explain and the stage tests use), with one
    coroutine frame instead of six on every wake-up of the request. Filters are entered
    only for a rule that has any."""
    stages: list[Stage] = [
        partial(observe, rt),  # request id, trace span, metrics, access log
        partial(decide, rt),  # normalize 400, service 404, authz 403, route 404/500,
        #                       rate limit 429, faults (delay / abort)
        partial(retry_and_timeout, rt),  # request timeout 504, retries within budget
        partial(balance, rt),  # endpoint choice, outlier ejection bookkeeping
    ]
    terminal: Next = partial(forward, rt)  # the backend, through the pool: 503 on overflow
    return _compose(stages, terminal)


def _compose(stages: Sequence[Stage], terminal: Next) -> Handler:
    nxt = terminal
    for stage in reversed(stages):
        nxt = partial(stage, next=nxt)  # type: ignore[call-arg]

    async def handle(head: RequestHead, body: BodySource, info: DownstreamInfo) -> Response:
        ex = Exchange(head, ReplayableBody(body, RETRY_BUFFER, empty=not head.has_body), info,
                      time.monotonic())
        return await nxt(ex)

    return handle


# -- stages, in pipeline order ----------------------------------------------------------


async def observe(rt: Runtime, ex: Exchange, next: Next) -> Response:
    head = ex.head
    ex.request_id = ensure_request_id(head.headers)
    ex.span = start_span(head.headers, f"{head.authority}{head.path}", time.time_ns())
    inject(head.headers, ex.span)
    rec = _Observed(head.method, head.path, head.authority, rt.clock.now())
    try:
        resp = await next(ex)
    except BaseException as e:
        cancelled = isinstance(e, anyio.get_cancelled_exc_class())
        _finish(rt, ex, rec, 499 if cancelled else 500, ["DC"], 0, "")
        raise
    rec.user_agent = header(head.headers, "user-agent") or ""
    resp.body = _ObservedBody(resp.body, rt, ex, rec, resp.status, ex.flags + resp.flags,
                              resp.upstream_host)
    return resp


async def decide(rt: Runtime, ex: Exchange, next: Next) -> Response:
    """normalize -> resolve service -> authorize -> route -> rate limit -> faults, then
    the filters when the rule has any, then `next`."""
    resp = _normalize(ex) or _resolve_service(rt, ex) or _authorize(rt, ex) or \
        _route(rt, ex)
    if resp is not None:
        return resp
    assert ex.service is not None and ex.selection is not None
    traffic = rt.state.traffic(ex.service.key)
    if traffic.rate_limit is not None and (resp := _rate_limit(rt, ex)) is not None:
        return resp
    if traffic.faults is not None and (resp := await _faults(rt, ex)) is not None:
        return resp
    f = ex.selection.rule.filters
    if f.request_headers is None and f.rewrite is None and not f.mirrors and \
            f.response_headers is None:
        return await next(ex)
    return await apply_filters(rt, ex, next)


# Each decision: a local answer, or None to go on. The one-stage wrappers below are
# the same decisions as single pipeline stages (unit tests, ambientctl explain).


def _normalize(ex: Exchange) -> Response | None:
    """Every later stage (authz, routes, rewrite) and the backend see one path: the
    normalized one (mesh/http_paths.py). What cannot be normalized safely is refused
    here, before any decision, and never forwarded."""
    head = ex.head
    try:
        head.method, head.target = normalize_request(head.method, head.target)
    except RequestNormalizationError as e:
        ex.reason = f"request refused: {e}"
        log.debug("request refused", reason=str(e), peer=ex.info.peer,
                  principal=ex.info.source_principal)
        return local_response(400, "bad request: " + str(e), flag="DPE")
    return None


def _resolve_service(rt: Runtime, ex: Exchange) -> Response | None:
    found = rt.state.config.resolve(ex.info.destination, ex.head.authority)
    if found is None:
        ex.reason = f"no service of this waypoint for {ex.head.authority or '(no host)'}"
        return local_response(404, ex.reason, flag="NR")
    ex.service, ex.port = found
    if ex.port is None and ex.info.destination:
        ex.port = split_hostport(ex.info.destination)[1]
    if ex.port is None:
        ex.port = ex.service.ports[0].port if ex.service.ports else None
    return None


def _authorize(rt: Runtime, ex: Exchange) -> Response | None:
    assert ex.service is not None
    policies = rt.state.config.authz.get(ex.service.key, ())
    if policies:
        facts = RequestFacts(ex.info.source_principal, ex.head.method, ex.head.path,
                             ex.head.authority, ex.port, ex.info.peer.rsplit(":", 1)[0] or None)
        verdict = evaluate(policies, facts)
        if not verdict:
            ex.reason = verdict.reason
            return local_response(403, verdict.reason, flag="RBAC")
    return None


def _route(rt: Runtime, ex: Exchange) -> Response | None:
    assert ex.service is not None
    table = rt.state.config.routes.get(ex.service.key)
    sel = table.select(ex.head, ex.port) if table is not None else None
    if sel is None:
        ex.reason = f"no HTTPRoute rule of {ex.service.key} matches"
        return local_response(404, "no route matched", flag="NR")
    ex.selection = sel
    backend = rt.state.picker(sel.rule).pick()
    if backend is None or backend.service not in rt.state.config.services:
        ex.reason = f"rule {sel.rule.name} has no usable backend"
        return local_response(500, "no usable backend for this route", flag="NR")
    ex.backend = backend
    return None


def _rate_limit(rt: Runtime, ex: Exchange) -> Response | None:
    assert ex.service is not None
    cfg = rt.state.traffic(ex.service.key).rate_limit
    if cfg is not None:
        key = f"{ex.service.key}|{ex.route_name}"
        ok, wait = rt.state.rate_limiter.allow(key, cfg, ex.info.source_principal,
                                               rt.state.clock())
        if not ok:
            ex.reason = "local rate limit"
            return local_response(429, "local_rate_limited", [
                (RATE_LIMIT_HEADER, "true"), ("retry-after", str(max(1, math.ceil(wait))))],
                flag="RL")
    return None


async def _faults(rt: Runtime, ex: Exchange) -> Response | None:
    assert ex.service is not None
    cfg = rt.state.traffic(ex.service.key).faults
    if cfg is not None:
        fault = decide_fault(cfg, rt.state.rng)
        if fault.delay_ms:
            ex.flags.append("DI")
            await anyio.sleep(fault.delay_ms / 1000)
        if fault.abort_status:
            ex.reason = "fault injection abort"
            return local_response(fault.abort_status, "fault filter abort", flag="FI")
    return None


async def normalize(rt: Runtime, ex: Exchange, next: Next) -> Response:
    resp = _normalize(ex)
    return resp if resp is not None else await next(ex)


async def resolve_service(rt: Runtime, ex: Exchange, next: Next) -> Response:
    resp = _resolve_service(rt, ex)
    return resp if resp is not None else await next(ex)


async def authorize(rt: Runtime, ex: Exchange, next: Next) -> Response:
    resp = _authorize(rt, ex)
    return resp if resp is not None else await next(ex)


async def route(rt: Runtime, ex: Exchange, next: Next) -> Response:
    resp = _route(rt, ex)
    return resp if resp is not None else await next(ex)


async def rate_limit(rt: Runtime, ex: Exchange, next: Next) -> Response:
    resp = _rate_limit(rt, ex)
    return resp if resp is not None else await next(ex)


async def inject_faults(rt: Runtime, ex: Exchange, next: Next) -> Response:
    resp = await _faults(rt, ex)
    return resp if resp is not None else await next(ex)


async def apply_filters(rt: Runtime, ex: Exchange, next: Next) -> Response:
    assert ex.selection is not None
    filters = ex.selection.rule.filters
    if filters.request_headers is not None:
        filters.request_headers.apply(ex.head.headers)
    if filters.rewrite is not None:
        filters.rewrite.apply(ex.head, ex.selection.match.path)
    resp = await next(ex)
    for mirror in filters.mirrors:
        _start_mirror(rt, ex, mirror)
    if filters.response_headers is not None:
        filters.response_headers.apply(resp.headers)
    return resp


async def retry_and_timeout(rt: Runtime, ex: Exchange, next: Next) -> Response:
    assert ex.selection is not None and ex.service is not None
    rule = ex.selection.rule
    if not rule.timeouts.request_ms:
        return await _tries(rt, ex, next)  # no cancel scope to enter and leave
    with anyio.move_on_after(rule.timeouts.request_ms / 1000) as scope:
        resp = await _tries(rt, ex, next)
    if scope.cancelled_caught:
        ex.reason = f"request timeout {rule.timeouts.request_ms} ms"
        return local_response(504, "upstream request timeout", flag="UT")
    return resp


async def _tries(rt: Runtime, ex: Exchange, next: Next) -> Response:
    assert ex.selection is not None and ex.service is not None
    policy = rt.state.retry_policy(ex.selection.rule, ex.service.key)
    budget = rt.state.retry_budget(ex.service.key)
    budget.request_started(rt.state.clock())
    while True:
        ex.tries += 1
        status: int | None
        if not policy.per_try_timeout_ms:
            resp = await next(ex)  # no cancel scope to enter and leave
            timed_out = False
        else:
            with anyio.move_on_after(policy.per_try_timeout_ms / 1000) as scope:
                resp = await next(ex)
            timed_out = scope.cancelled_caught
        if timed_out:
            _record_outcome(rt, ex, None)
            resp = local_response(504, "upstream per-try timeout", flag="UT")
            status = None
        else:
            status = None if _NO_RESPONSE.intersection(resp.flags) else resp.status
        if "UO" in resp.flags or not ex.body.replayable or \
                not policy.should_retry(ex.head.method, ex.tries, status, ex.head.is_grpc):
            return resp
        if not budget.try_start_retry(rt.state.clock()):
            rt.metrics.retry_budget_exhausted.labels(ex.service.fqdn).inc()
            resp.flags.append("URX")
            return resp
        rt.metrics.retries.labels(ex.service.fqdn).inc()
        await resp.body.aclose()
        ex.previous_host = ex.endpoint.key if ex.endpoint else None
        await anyio.sleep(policy.backoff_ms(ex.tries, rt.state.rng) / 1000)


async def balance(rt: Runtime, ex: Exchange, next: Next) -> Response:
    assert ex.backend is not None and ex.service is not None
    backend = rt.state.config.services[ex.backend.service]
    port = ex.backend.port or ex.port or (backend.ports[0].port if backend.ports else 0)
    endpoints = backend.endpoints.get(port, ())
    if not endpoints:
        ex.reason = f"{backend.key} port {port} has no endpoints"
        return local_response(503, "no healthy upstream", flag="UH")
    detector = rt.state.outlier(ex.service.key, backend.key)
    now = rt.state.clock()
    if detector is not None:
        endpoints = tuple(detector.available(endpoints, (e.key for e in endpoints), now))
        rt.metrics.ejected.labels(backend.fqdn).set(len(detector.ejected()))
    ex.endpoint = rt.state.round_robin(backend.key, port, endpoints, ex.previous_host)
    resp = await next(ex)
    if detector is not None and "UO" not in resp.flags:
        _record_outcome(rt, ex, None if _NO_RESPONSE.intersection(resp.flags) else resp.status)
    return resp


async def forward(rt: Runtime, ex: Exchange) -> Response:
    assert ex.endpoint is not None and ex.backend is not None and ex.service is not None
    backend = rt.state.config.services[ex.backend.service]
    port_info = backend.port(ex.backend.port or ex.port)
    h2 = port_info.upstream_h2 if port_info is not None else None
    if h2 is None:
        h2 = ex.head.is_grpc  # gRPC needs HTTP/2; anything else defaults to HTTP/1.1
    head = ex.head.copy()
    try:
        return await rt.pool.request(ex.service.key, rt.state.limits(ex.service.key),
                                     ex.endpoint, "h2" if h2 else "h1", head, ex.body.attempt())
    except LimitExceededError as e:
        ex.reason = str(e)
        return local_response(503, "upstream connection limit reached",
                              [(OVERFLOW_HEADER, e.limit)], flag="UO")
    except UpstreamConnectError as e:
        ex.reason = str(e)
        return local_response(503, "upstream connect error", flag="UF")
    except UpstreamError as e:
        ex.reason = str(e)
        return local_response(503, "upstream reset before response headers", flag="UR")


# -- helpers ------------------------------------------------------------------------------


def _record_outcome(rt: Runtime, ex: Exchange, status: int | None) -> None:
    if ex.endpoint is None or ex.backend is None or ex.service is None:
        return
    detector = rt.state.outlier(ex.service.key, ex.backend.service)
    if detector is None:
        return
    backend = rt.state.config.services[ex.backend.service]
    total = len(backend.endpoints.get(ex.endpoint.port, ())) or \
        max((len(v) for v in backend.endpoints.values()), default=1)
    ejection = detector.record(ex.endpoint.key, status, rt.state.clock(), total)
    if ejection is not None:
        log.info("endpoint ejected", endpoint=ejection.endpoint, service=backend.key,
                 until_s=round(ejection.until - rt.state.clock(), 3), times=ejection.times)


def _start_mirror(rt: Runtime, ex: Exchange, mirror: Mirror) -> None:
    """Fire and forget: the copy goes out after the primary answered, its response is
    read and dropped, its failures only logged; when too many are in flight, or the
    body was too large to keep, the copy is skipped."""
    content = ex.body.content()
    if content is None or rt.mirrors_in_flight >= MIRROR_MAX_IN_FLIGHT:
        return
    if mirror.percent < 100 and rt.state.rng.random() * 100 >= mirror.percent:
        return
    backend = rt.state.config.services.get(mirror.target.service)
    if backend is None:
        return
    port = mirror.target.port or ex.port or (backend.ports[0].port if backend.ports else 0)
    endpoints = backend.endpoints.get(port, ())
    if not endpoints:
        return
    endpoint = rt.state.round_robin(backend.key, port, endpoints, None)
    head = ex.head.copy()
    host, hport = split_hostport(head.authority)
    head.authority = f"{host}-shadow" + (f":{hport}" if hport else "")
    port_info = backend.port(port)
    h2 = port_info.upstream_h2 if port_info else None
    protocol: Literal["h1", "h2"] = "h2" if (h2 if h2 is not None else head.is_grpc) else "h1"
    rt.mirrors_in_flight += 1

    async def send() -> None:
        try:
            with anyio.fail_after(10):
                resp = await rt.pool.request(f"mirror|{backend.key}", None, endpoint, protocol,
                                             head, _bytes_body(content))
                async for _ in resp.body.chunks():
                    pass
        except Exception as e:  # a shadow must never affect anything
            log.debug("mirror failed", backend=backend.key, error=repr(e))
        finally:
            rt.mirrors_in_flight -= 1

    rt.background.start_soon(send)


def _bytes_body(data: bytes) -> BodySource:
    return BytesBody(data) if data else EmptyBody()


@dataclass(slots=True)
class _Observed:
    """What the access log needs of the request as it arrived (filters may rewrite
    the head on its way upstream)."""

    method: str
    path: str
    authority: str
    start_wall: str
    user_agent: str = ""


class _ObservedBody:
    """Counts response bytes and reports the request once, when the body is done."""

    def __init__(self, inner: BodySource, rt: Runtime, ex: Exchange, rec: _Observed,
                 status: int, flags: list[str], upstream_host: str) -> None:
        self.inner = inner  # http2 looks through it to see an empty body
        self._rt = rt
        self._ex = ex
        self._rec = rec
        self._status = status
        self._flags = flags
        self._upstream_host = upstream_host
        self._done = False
        self.sent = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        async for data in self.inner.chunks():
            self.sent += len(data)
            yield data

    def take_ready(self) -> tuple[bytes, Headers | None] | None:
        ready = take_ready(self.inner)
        if ready is not None:
            self.sent += len(ready[0])
        return ready

    @property
    def trailers(self) -> Headers | None:
        return self.inner.trailers

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            if not self._done:
                self._done = True
                _finish(self._rt, self._ex, self._rec, self._status, self._flags, self.sent,
                        self._upstream_host)


PeerLabels = PeerValues  # mesh.telemetry.labels.PEER_LABELS, in order


def peer_labels(principal: str | None, caller: Party | None, ep: Endpoint | None,
                dest: ServiceInfo | None, authority: str,
                workloads: Mapping[str, Party]) -> PeerLabels:
    """Who called (the snapshot's workload at the tunnel's source address, when the
    peer certificate proves it: mesh.telemetry.labels.source_party), which endpoint
    answered and for which Service, as Istio labels them."""
    source = source_party(caller, principal)
    known = workloads.get(ep.address) if ep is not None else None
    destination = Party(
        ep.workload if ep and ep.workload else UNKNOWN,
        ep.namespace if ep and ep.namespace else dest.namespace if dest else UNKNOWN,
        ep.identity if ep and ep.identity else UNKNOWN,
        known.app if known is not None else UNKNOWN)
    service = ServiceRef(dest.fqdn, dest.name, dest.namespace) if dest else \
        ServiceRef(authority or UNKNOWN)
    return peer_values(source, destination, service)


def _address(peer: str) -> str:
    """The IP of a DownstreamInfo.peer ("ip:port"; an IPv4-mapped IPv6 as IPv4), as
    the snapshot's workload addresses are written."""
    ip = peer.rsplit(":", 1)[0]
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


def _finish(rt: Runtime, ex: Exchange, rec: _Observed, status: int, flags: list[str],
            response_bytes: int, status_upstream: str) -> None:
    duration_ms = (time.monotonic() - ex.started) * 1000
    principal = ex.info.source_principal
    backend = rt.state.config.services.get(ex.backend.service) if ex.backend else None
    dest = backend or ex.service
    flag_text = ",".join(dict.fromkeys(flags)) if flags else "-"
    source_ip = _address(ex.info.peer)
    peer = rt.peer_labels(principal, source_ip, ex.endpoint, dest, rec.authority)
    labels = RequestLabels(*peer, "grpc" if ex.head.is_grpc else "http", status, flag_text,
                           "mutual_tls" if principal else "none")
    request_bytes = ex.body.size if ex.body.complete else 0
    rt.metrics.observe(labels, duration_ms, request_bytes, response_bytes)
    span = ex.span
    if span is not None and rt.exporter is not None:
        span.end_ns = time.time_ns()
        span.error = status >= 500
        span.attributes.update({
            "http.request.method": rec.method, "url.path": rec.path,
            "server.address": rec.authority, "http.response.status_code": status,
            "upstream.address": status_upstream, "route.name": ex.route_name,
            "x-request-id": ex.request_id,
        })
        rt.exporter.submit(span)
    if rt.access_log.enabled:
        rt.access_log.write(AccessRecord(
            rec.start_wall, rec.method, rec.path, ex.head.protocol, status, flag_text,
            round(duration_ms, 3), request_bytes, response_bytes, rec.authority,
            ex.request_id, span.context.trace_id if span else "", principal or "",
            peer[8], status_upstream, ex.route_name, ex.tries, rec.user_agent, ex.reason))

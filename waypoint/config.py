"""The waypoint's configuration: the controller's WAYPOINT snapshot (mesh/api
config.proto) converted once into plain lookup tables the pipeline reads per
request: services by host/VIP, a RouteTable per service, traffic settings per
service and the L7 authorization policies in force.

A snapshot that cannot be converted raises RouteConfigError naming the object and
field, so the subscriber NACKs it and the last good config stays in force."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from mesh.api import config_pb2 as pb
from mesh.authz import Policy, applies_to_service, compile_policies
from mesh.telemetry.labels import Party, party, workload_name
from waypoint.errors import RouteConfigError
from waypoint.faults import FaultConfig
from waypoint.limits import LimitsConfig
from waypoint.outlier import OutlierConfig
from waypoint.ratelimit import RateLimitConfig
from waypoint.routing import (
    BackendTarget,
    Filters,
    HeaderModifier,
    Mirror,
    PathMatch,
    RetryConfig,
    RouteMatch,
    RouteRule,
    RouteTable,
    Timeouts,
    UrlRewrite,
    ValueMatch,
)
from waypoint.upstream import Endpoint

H2_APP_PROTOCOLS = frozenset({"h2c", "http2", "grpc", "kubernetes.io/h2c"})
_PATH_KIND = {pb.StringMatch.EXACT: "Exact", pb.StringMatch.PREFIX: "PathPrefix",
              pb.StringMatch.REGEX: "RegularExpression"}


@dataclass(frozen=True)
class ServicePortInfo:
    port: int
    target_port: int  # 0: named port, resolved per endpoint
    app_protocol: str = ""

    @property
    def upstream_h2(self) -> bool | None:
        """True/False when appProtocol says; None: use the client's protocol."""
        if not self.app_protocol:
            return None
        return self.app_protocol.lower() in H2_APP_PROTOCOLS


@dataclass(frozen=True)
class ServiceInfo:
    namespace: str
    name: str
    hostnames: tuple[str, ...]
    vips: tuple[str, ...]
    ports: tuple[ServicePortInfo, ...]
    endpoints: dict[int, tuple[Endpoint, ...]]  # by service port

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"

    def port(self, port: int | None) -> ServicePortInfo | None:
        if port is None:
            return self.ports[0] if len(self.ports) == 1 else None
        return self._by_port.get(port)

    @cached_property
    def _by_port(self) -> dict[int, ServicePortInfo]:
        by_port: dict[int, ServicePortInfo] = {}
        for p in self.ports:
            by_port.setdefault(p.port, p)  # the first wins, as a linear scan would
        return by_port


@dataclass(frozen=True)
class TrafficSettings:
    """What one TrafficPolicy sets for a service (None: not set)."""

    policy: str = ""
    retry_budget: tuple[float, int] | None = None  # (percent, min retries per second)
    outlier: OutlierConfig | None = None
    limits: LimitsConfig | None = None
    rate_limit: RateLimitConfig | None = None
    faults: FaultConfig | None = None
    retry_non_idempotent: bool = False


NO_TRAFFIC_SETTINGS = TrafficSettings()


@dataclass
class WaypointConfig:
    version: str = ""
    trust_domain: str = "cluster.local"
    name: str = ""
    namespace: str = ""
    identity: str = ""
    services: dict[str, ServiceInfo] = field(default_factory=dict)
    served: frozenset[str] = frozenset()
    routes: dict[str, RouteTable] = field(default_factory=dict)
    traffic: dict[str, TrafficSettings] = field(default_factory=dict)
    authz: dict[str, tuple[Policy, ...]] = field(default_factory=dict)  # by service key
    # Every workload of the snapshot by address, as metric labels name it: who a
    # caller is (mesh.telemetry.labels.source_party) and what a backend's app is.
    workloads_by_ip: dict[str, Party] = field(default_factory=dict)
    _by_host: dict[str, str] = field(default_factory=dict)
    _by_vip: dict[str, str] = field(default_factory=dict)

    def resolve(self, destination: str | None, host: str) -> tuple[ServiceInfo, int | None] | None:
        """The served Service a request is for: by the tunnel's original destination
        (VIP:port) first, then by the Host / :authority header."""
        if destination:
            addr, port = split_hostport(destination)
            key = self._by_vip.get(addr)
            if key is not None:
                return self.services[key], port
        if host:
            name, port = split_hostport(host)
            name = name.lower().rstrip(".")
            key = self._by_host.get(name) or self._by_vip.get(name)
            if key is not None:
                return self.services[key], port
        if len(self.served) == 1 and not destination and not host:
            only = next(iter(self.served))
            return self.services[only], None
        return None

    def traffic_for(self, service: str) -> TrafficSettings:
        return self.traffic.get(service, NO_TRAFFIC_SETTINGS)


def split_hostport(value: str) -> tuple[str, int | None]:
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, int(port) if port.isdigit() else None
    return value, None


def _workload_names(snapshot: pb.Snapshot) -> dict[str, tuple[str, str]]:
    return {w.uid: (workload_name(w.name, w.labels), w.namespace) for w in snapshot.workloads}


def _workloads_by_ip(snapshot: pb.Snapshot) -> dict[str, Party]:
    found: dict[str, Party] = {}
    for w in snapshot.workloads:
        p = party(w.name, w.namespace, w.labels, w.identity)
        for address in w.addresses:
            with contextlib.suppress(ValueError):  # not an IP: no caller comes from it
                found[str(ipaddress.ip_address(address))] = p
    return found


def _service(svc: pb.Service, workloads: dict[str, tuple[str, str]]) -> ServiceInfo:
    obj = f"Service {svc.namespace}/{svc.name}"
    ports = tuple(ServicePortInfo(p.port, p.target_port, p.app_protocol) for p in svc.ports)
    by_port: dict[int, list[Endpoint]] = {p.port: [] for p in ports}
    for i, ep in enumerate(svc.endpoints):
        if not ep.addresses:
            continue
        address = ep.addresses[0]
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise RouteConfigError(obj, f"endpoints[{i}].addresses[0]",
                                   f"not an IP address: {address!r}") from None
        workload, ns = workloads.get(ep.workload_uid, ("", svc.namespace))
        mapping = {p.service_port: p.target_port for p in ep.ports}
        for sp in ports:
            target = mapping.get(sp.port) or sp.target_port or sp.port
            by_port[sp.port].append(Endpoint(address, target, workload, ns, ep.identity,
                                             ep.enrolled))
    hostnames = tuple(h.lower() for h in svc.hostnames) or (
        svc.name, f"{svc.name}.{svc.namespace}", f"{svc.name}.{svc.namespace}.svc",
        f"{svc.name}.{svc.namespace}.svc.cluster.local")
    return ServiceInfo(svc.namespace, svc.name, hostnames, tuple(svc.vips), ports,
                       {k: tuple(v) for k, v in by_port.items()})


def _regex(obj: str, where: str, value: str) -> None:
    try:
        re.compile(value)
    except re.error as e:
        raise RouteConfigError(obj, where, f"not a valid regular expression ({e})") from None


def _value_matches(obj: str, where: str, items: Iterable[pb.HeaderMatch]
                   ) -> tuple[ValueMatch, ...]:
    out = []
    for i, h in enumerate(items):
        regex = h.match.type == pb.StringMatch.REGEX
        if regex:
            _regex(obj, f"{where}[{i}].value", h.match.value)
        out.append(ValueMatch(h.name.lower() if where.endswith("headers") else h.name,
                              h.match.value, regex))
    return tuple(out)


def _modifier(m: pb.HeaderModifier) -> HeaderModifier:
    return HeaderModifier(
        set=tuple((h.name, h.value) for h in m.set),
        add=tuple((h.name, h.value) for h in m.add),
        remove=tuple(m.remove),
    )


def _backend(b: pb.BackendRef, route_ns: str) -> BackendTarget:
    return BackendTarget(f"{b.namespace or route_ns}/{b.name}", b.port or None, b.weight)


_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


def _rewrite(obj: str, where: str, u: pb.UrlRewrite, matches: tuple[RouteMatch, ...]
             ) -> UrlRewrite:
    """Checked again here because a snapshot may come from elsewhere than our
    controller: a prefix rewrite without a PathPrefix match would be silently skipped."""
    if u.hostname and (len(u.hostname) > 253 or not _HOSTNAME.match(u.hostname)):
        raise RouteConfigError(obj, f"{where}.hostname",
                               f"not a precise DNS hostname: {u.hostname!r}")
    kind = u.WhichOneof("path")
    value = getattr(u, kind) if kind else None
    field_name = {"full_path": "replaceFullPath", "prefix_match": "replacePrefixMatch"}
    if kind is not None and not str(value).startswith("/"):
        raise RouteConfigError(obj, f"{where}.path.{field_name[kind]}", "must start with '/'")
    if kind == "prefix_match" and any(m.path.kind != "PathPrefix" for m in matches):
        raise RouteConfigError(obj, f"{where}.path.replacePrefixMatch",
                               "needs PathPrefix matches (the prefix it replaces)")
    return UrlRewrite(hostname=u.hostname or None,
                      full_path=value if kind == "full_path" else None,
                      prefix=value if kind == "prefix_match" else None)


def _rule(route: pb.HTTPRoute, index: int, r: pb.RouteRule, port: int | None) -> RouteRule:
    obj = f"HTTPRoute {route.namespace}/{route.name}"
    matches = []
    for j, m in enumerate(r.matches):
        where = f"spec.rules[{index}].matches[{j}]"
        path = PathMatch()
        if m.HasField("path"):
            kind = _PATH_KIND[m.path.type]
            if kind == "RegularExpression":
                _regex(obj, f"{where}.path.value", m.path.value)
            elif not m.path.value.startswith("/"):
                raise RouteConfigError(obj, f"{where}.path.value", "must start with '/'")
            path = PathMatch(kind, m.path.value)  # type: ignore[arg-type]
        matches.append(RouteMatch(
            path=path,
            headers=_value_matches(obj, f"{where}.headers", m.headers),
            query=_value_matches(obj, f"{where}.queryParams", m.query_params),
            method=m.method or None,
        ))
    rewrite = None
    if r.HasField("url_rewrite") and (r.url_rewrite.hostname or r.url_rewrite.WhichOneof("path")):
        rewrite = _rewrite(obj, f"spec.rules[{index}].filters.urlRewrite", r.url_rewrite,
                           tuple(matches))
    filters = Filters(
        request_headers=_modifier(r.request_headers) if r.HasField("request_headers") else None,
        response_headers=_modifier(r.response_headers) if r.HasField("response_headers")
        else None,
        rewrite=rewrite,
        mirrors=tuple(Mirror(_backend(m.backend, route.namespace), float(m.percent))
                      for m in r.mirrors),
    )
    if r.timeout_ms and r.backend_timeout_ms > r.timeout_ms:
        raise RouteConfigError(obj, f"spec.rules[{index}].timeouts.backendRequest",
                               "must not exceed timeouts.request")
    retry = None
    if r.HasField("retry"):
        retry = RetryConfig(r.retry.attempts, frozenset(r.retry.codes), r.retry.backoff_ms or 25)
    return RouteRule(
        route=f"{route.namespace}/{route.name}", index=index, matches=tuple(matches),
        backends=tuple(_backend(b, route.namespace) for b in r.backends),
        filters=filters, timeouts=Timeouts(r.timeout_ms, r.backend_timeout_ms),
        retry=retry, port=port,
    )


def _traffic(t: pb.TrafficPolicy) -> TrafficSettings:
    obj = f"TrafficPolicy {t.namespace}/{t.name}"
    rl = None
    if t.HasField("rate_limit"):
        unit = t.rate_limit.unit_seconds or 1
        if t.rate_limit.requests_per_unit < 1:
            raise RouteConfigError(obj, "spec.rateLimit.requestsPerUnit", "must be >= 1")
        rl = RateLimitConfig(t.rate_limit.requests_per_unit / unit,
                             t.rate_limit.burst or t.rate_limit.requests_per_unit,
                             per_source=t.rate_limit.per_source)
    od = None
    if t.HasField("outlier_detection"):
        o = t.outlier_detection
        five = o.consecutive_5xx if o.HasField("consecutive_5xx") else 5
        if five == 0 and o.consecutive_gateway_errors == 0:
            raise RouteConfigError(obj, "spec.outlierDetection.consecutiveGatewayErrors",
                                   "must be >= 1 when consecutive5xxErrors is 0")
        od = OutlierConfig(consecutive_5xx=five,
                           consecutive_gateway_errors=o.consecutive_gateway_errors,
                           interval_s=(o.interval_ms or 10_000) / 1000,
                           base_ejection_s=(o.base_ejection_time_ms or 30_000) / 1000,
                           max_ejection_percent=o.max_ejection_percent)
    limits = None
    if t.HasField("connection_pool"):
        c = t.connection_pool
        limits = LimitsConfig(c.max_connections or None, c.max_pending_requests or None,
                              c.max_requests_per_connection or None)
    faults = None
    if t.HasField("fault_injection"):
        f = t.fault_injection
        if f.abort_status and not 200 <= f.abort_status <= 599:
            raise RouteConfigError(obj, "spec.faultInjection.abort.httpStatus",
                                   f"must be 200-599 (got {f.abort_status})")
        faults = FaultConfig(f.delay_ms, f.delay_percent, f.abort_status, f.abort_percent)
    budget = None
    if t.HasField("retry_budget"):
        budget = (t.retry_budget.percent, t.retry_budget.min_retries_per_second)
    return TrafficSettings(f"{t.namespace}/{t.name}", budget, od, limits, rl, faults,
                           retry_non_idempotent=t.retry.allow_non_idempotent)


def build(snapshot: pb.Snapshot) -> WaypointConfig:
    """Convert a WAYPOINT snapshot; raises RouteConfigError on anything unusable."""
    wl = _workload_names(snapshot)
    services = {f"{s.namespace}/{s.name}": _service(s, wl) for s in snapshot.services}
    served = frozenset(snapshot.waypoint.services) if snapshot.HasField("waypoint") else \
        frozenset(services)
    cfg = WaypointConfig(
        version=snapshot.version, trust_domain=snapshot.trust_domain or "cluster.local",
        name=snapshot.waypoint.name, namespace=snapshot.waypoint.namespace,
        identity=snapshot.waypoint.identity, services=services, served=served,
        workloads_by_ip=_workloads_by_ip(snapshot),
    )
    for key in served:
        svc = services.get(key)
        if svc is None:
            continue
        for h in svc.hostnames:
            cfg._by_host[h] = key
        for v in svc.vips:
            cfg._by_vip[v] = key
    rules: dict[str, list[RouteRule]] = {}
    for route in snapshot.routes:
        for parent in route.parents:
            key = f"{parent.namespace or route.namespace}/{parent.service}"
            if key not in served:
                continue
            for i, r in enumerate(route.rules):
                rules.setdefault(key, []).append(_rule(route, i, r, parent.port or None))
    for key in served:
        cfg.routes[key] = RouteTable(rules.get(key) or [
            RouteRule("", 0, (), (BackendTarget(key, None),))])
    for t in snapshot.traffic_policies:
        settings = _traffic(t)
        for key in t.services:
            cfg.traffic.setdefault(key, settings)  # oldest/first named policy wins
    policies = compile_policies(snapshot.authorizations)  # uncompilable -> deny-all
    waypoint = ((snapshot.waypoint.namespace, snapshot.waypoint.name)
                if snapshot.HasField("waypoint") and snapshot.waypoint.name else None)
    cfg.authz = {key: tuple(p for p in policies if applies_to_service(p, key, waypoint))
                 for key in served}
    return cfg

"""ClusterView -> per-proxy Snapshot protobufs (pure).

A Snapshot is assembled from serialized fragments: protobuf's wire format merges
concatenated messages, so the mesh-wide part (every workload and service), which is
identical for all node agents, is built and serialized once per view and shared. The
version is a hash of the content, so it is the same after a controller restart when
nothing changed, and a proxy that already holds it is not disturbed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import cached_property

from google.protobuf.message import Message

from controller.policy import effective_mtls, waypoint_authorizations, workload_authorizations
from controller.view import ClusterView, PodView, Ref, ServiceView
from mesh.api import config_pb2 as pb
from mesh.config import AuthorizationPolicy, HTTPRoute, TrafficPolicy, duration_ms
from mesh.config.gateway import BackendRef, HeaderModifier, URLRewrite
from mesh.ports import HBONE_PORT

_MTLS = {"STRICT": pb.STRICT, "PERMISSIVE": pb.PERMISSIVE}
_MATCH = {"Exact": pb.StringMatch.EXACT, "PathPrefix": pb.StringMatch.PREFIX,
          "RegularExpression": pb.StringMatch.REGEX}
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600}


@dataclass(frozen=True)
class SnapshotContent:
    """The content of one proxy's snapshot, without version and nonce."""

    kind: int
    parts: tuple[bytes, ...]

    @cached_property
    def version(self) -> str:
        h = hashlib.sha256()
        for p in self.parts:
            h.update(len(p).to_bytes(8, "big"))
            h.update(p)
        return h.hexdigest()[:16]

    def encode(self, nonce: str) -> bytes:
        header = pb.Snapshot(version=self.version, nonce=nonce).SerializeToString()
        return header + b"".join(self.parts)

    def message(self, nonce: str = "") -> pb.Snapshot:
        return pb.Snapshot.FromString(self.encode(nonce))

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.parts)


def _ser(msg: Message) -> bytes:
    return msg.SerializeToString(deterministic=True)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """Wire encoding of one length-delimited field (an embedded message)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


_PODS_TO_RUN = pb.Snapshot.DESCRIPTOR.fields_by_name["pods_to_run"].number
_WORKLOADS = pb.Snapshot.DESCRIPTOR.fields_by_name["workloads"].number
_SERVICES = pb.Snapshot.DESCRIPTOR.fields_by_name["services"].number
_WORKLOAD_POLICIES = pb.Snapshot.DESCRIPTOR.fields_by_name["workload_policies"].number


class FragmentCache:
    """Serialized sub-messages (workloads, services, pods to run) reused across
    rebuilds: after one change most of them are identical, and encoding 10 000
    workloads again would dominate the push latency. Entries not used by the latest
    build are dropped at the next one."""

    def __init__(self) -> None:
        self._old: dict[Hashable, tuple[object, bytes]] = {}
        self._new: dict[Hashable, tuple[object, bytes]] = {}
        self.hits = 0
        self.misses = 0

    def rotate(self) -> None:
        self._old, self._new = self._new, {}

    def get(self, key: Hashable, build: Callable[[], Message], keep: object = None) -> bytes:
        """`keep` holds objects whose id() is part of the key alive with the entry."""
        entry = self._new.get(key) or self._old.get(key)
        if entry is None:
            self.misses += 1
            entry = (keep, _ser(build()))
        else:
            self.hits += 1
        self._new[key] = entry
        return entry[1]


def waypoint_ref(view: ClusterView, ref: Ref | None) -> pb.WaypointRef | None:
    if ref is None:
        return None
    wp = view.waypoints.get(ref)
    return pb.WaypointRef(
        namespace=ref[0], name=ref[1], port=HBONE_PORT,
        addresses=wp.addresses if wp else [], identity=wp.identity if wp else "",
    )


def workload(view: ClusterView, pod: PodView) -> pb.Workload:
    return pb.Workload(
        uid=pod.uid, namespace=pod.namespace, name=pod.name, addresses=pod.addresses,
        node=pod.node or "", service_account=pod.service_account, identity=pod.identity,
        enrolled=pod.enrolled, waypoint=waypoint_ref(view, pod.waypoint), labels=pod.labels,
        phase=pod.phase, native_hbone=pod.native_hbone, excluded_ports=pod.excluded_ports,
    )


def service(view: ClusterView, sv: ServiceView) -> pb.Service:
    ports = []
    for p in sv.service.spec.ports:
        target = p.effective_target
        ports.append(pb.ServicePort(
            name=p.name or "", port=p.port,
            target_port=target if isinstance(target, int) else 0,
            target_port_name=target if isinstance(target, str) else "",
            protocol=p.protocol, app_protocol=p.app_protocol or "",
        ))
    return pb.Service(
        namespace=sv.service.namespace, name=sv.service.name, hostnames=sv.hostnames,
        vips=sv.vips, ports=ports,
        endpoints=[pb.Endpoint(
            workload_uid=e.workload_uid, addresses=e.addresses, node=e.node,
            enrolled=e.enrolled, identity=e.identity,
            ports=[pb.EndpointPort(service_port=s, target_port=t) for s, t in e.ports],
        ) for e in sv.endpoints],
        waypoint=waypoint_ref(view, sv.waypoint),
    )


def pod_to_run(pod: PodView) -> pb.PodToRun:
    return pb.PodToRun(
        namespace=pod.namespace, name=pod.name, uid=pod.uid,
        service_account=pod.service_account, labels=pod.labels, annotations=pod.annotations,
        enrolled=pod.enrolled, excluded_ports=pod.excluded_ports, identity=pod.identity,
        containers=[pb.Container(
            name=c.name, command=[*c.command, *c.args],
            env=[pb.EnvVar(name=e.name, value=e.value) for e in c.env],
            ports=[pb.ContainerPort(name=p.name or "", container_port=p.container_port,
                                    protocol=p.protocol) for p in c.ports],
            working_dir=c.working_dir or "",
        ) for c in pod.spec.containers],
    )


def authorization(p: AuthorizationPolicy) -> pb.Authorization:
    rules = []
    for r in p.spec.rules:
        rules.append(pb.Rule(
            sources=[pb.Source(
                principals=f.source.principals, not_principals=f.source.not_principals,
                namespaces=f.source.namespaces, not_namespaces=f.source.not_namespaces,
                ip_blocks=f.source.ip_blocks, not_ip_blocks=f.source.not_ip_blocks,
            ) for f in r.from_],
            operations=[pb.Operation(
                ports=t.operation.ports, not_ports=t.operation.not_ports,
                methods=t.operation.methods, not_methods=t.operation.not_methods,
                paths=t.operation.paths, not_paths=t.operation.not_paths,
                hosts=t.operation.hosts, not_hosts=t.operation.not_hosts,
            ) for t in r.to],
        ))
    return pb.Authorization(
        namespace=p.namespace, name=p.name,
        action=pb.ALLOW if p.spec.action == "ALLOW" else pb.DENY, rules=rules,
        selector=p.spec.selector.match_labels if p.spec.selector else {},
        targets=[pb.PolicyTarget(kind=t.kind, namespace=t.namespace or p.namespace, name=t.name)
                 for t in p.spec.target_refs],
    )


def _backend(route_ns: str, b: BackendRef) -> pb.BackendRef:
    ns = b.namespace or route_ns
    return pb.BackendRef(namespace=ns, name=b.name, port=b.port or 0, weight=b.weight,
                         hostname=f"{b.name}.{ns}.svc.cluster.local")


def _modifier(m: HeaderModifier | None) -> pb.HeaderModifier | None:
    if m is None:
        return None
    return pb.HeaderModifier(
        set=[pb.HeaderValue(name=h.name, value=h.value) for h in m.set],
        add=[pb.HeaderValue(name=h.name, value=h.value) for h in m.add],
        remove=m.remove,
    )


def _rewrite(u: URLRewrite | None) -> pb.UrlRewrite | None:
    if u is None:
        return None
    msg = pb.UrlRewrite(hostname=u.hostname or "")
    if u.path is not None and u.path.type == "ReplaceFullPath":
        msg.full_path = u.path.replace_full_path or "/"
    elif u.path is not None:
        msg.prefix_match = u.path.replace_prefix_match or "/"
    return msg


def route(r: HTTPRoute) -> pb.HTTPRoute:
    rules = []
    for rule in r.spec.rules:
        req = next((f.request_header_modifier for f in rule.filters
                    if f.type == "RequestHeaderModifier"), None)
        resp = next((f.response_header_modifier for f in rule.filters
                     if f.type == "ResponseHeaderModifier"), None)
        rewrite = next((f.url_rewrite for f in rule.filters if f.type == "URLRewrite"), None)
        mirrors = [pb.Mirror(backend=_backend(r.namespace, f.request_mirror.backend_ref),
                             percent=100 if f.request_mirror.percent is None
                             else f.request_mirror.percent)
                   for f in rule.filters if f.type == "RequestMirror" and f.request_mirror]
        rules.append(pb.RouteRule(
            name=rule.name or "",
            matches=[pb.RouteMatch(
                path=pb.StringMatch(type=_MATCH[m.path.type], value=m.path.value)
                if m.path else None,
                headers=[pb.HeaderMatch(name=h.name, match=pb.StringMatch(
                    type=_MATCH[h.type], value=h.value)) for h in m.headers],
                query_params=[pb.HeaderMatch(name=q.name, match=pb.StringMatch(
                    type=_MATCH[q.type], value=q.value)) for q in m.query_params],
                method=m.method or "",
            ) for m in rule.matches],
            backends=[_backend(r.namespace, b) for b in rule.backend_refs],
            request_headers=_modifier(req), response_headers=_modifier(resp), mirrors=mirrors,
            timeout_ms=duration_ms(rule.timeouts.request) if rule.timeouts else 0,
            backend_timeout_ms=duration_ms(rule.timeouts.backend_request) if rule.timeouts else 0,
            retry=pb.RetryPolicy(attempts=rule.retry.attempts, codes=rule.retry.codes,
                                 backoff_ms=duration_ms(rule.retry.backoff))
            if rule.retry else None,
            url_rewrite=_rewrite(rewrite),
        ))
    return pb.HTTPRoute(
        namespace=r.namespace, name=r.name,
        parents=[pb.RouteParent(namespace=p.namespace or r.namespace, service=p.name,
                                port=p.port or 0)
                 for p in r.spec.parent_refs if p.is_service],
        hostnames=r.spec.hostnames, rules=rules,
    )


def traffic_policy(t: TrafficPolicy) -> pb.TrafficPolicy:
    s = t.spec
    msg = pb.TrafficPolicy(namespace=t.namespace, name=t.name,
                           services=[f"{t.namespace}/{ref.name}" for ref in s.target_refs])
    if s.retry_budget:
        msg.retry_budget.CopyFrom(pb.RetryBudget(
            percent=s.retry_budget.percent,
            min_retries_per_second=s.retry_budget.min_retries_per_second))
    if s.retry:
        msg.retry.CopyFrom(pb.RetrySettings(allow_non_idempotent=s.retry.allow_non_idempotent))
    if s.outlier_detection:
        o = s.outlier_detection
        msg.outlier_detection.CopyFrom(pb.OutlierDetection(
            consecutive_5xx=o.consecutive_5xx_errors,
            consecutive_gateway_errors=o.consecutive_gateway_errors,
            interval_ms=duration_ms(o.interval),
            base_ejection_time_ms=duration_ms(o.base_ejection_time),
            max_ejection_percent=o.max_ejection_percent))
    if s.connection_pool:
        c = s.connection_pool
        msg.connection_pool.CopyFrom(pb.ConnectionPool(
            max_connections=c.max_connections or 0,
            max_pending_requests=c.max_pending_requests or 0,
            max_requests_per_connection=c.max_requests_per_connection or 0))
    if s.rate_limit:
        msg.rate_limit.CopyFrom(pb.RateLimit(
            requests_per_unit=s.rate_limit.requests_per_unit,
            unit_seconds=_UNIT_SECONDS[s.rate_limit.unit], burst=s.rate_limit.burst or 0,
            per_source=s.rate_limit.per_source_identity))
    if s.fault_injection:
        f = s.fault_injection
        msg.fault_injection.CopyFrom(pb.FaultInjection(
            delay_percent=f.delay.percent if f.delay else 0,
            delay_ms=duration_ms(f.delay.fixed_delay) if f.delay else 0,
            abort_percent=f.abort.percent if f.abort else 0,
            abort_status=f.abort.http_status if f.abort else 0))
    return msg


class SnapshotBuilder:
    """Builds snapshots for one ClusterView; the mesh-wide part is built once."""

    def __init__(self, view: ClusterView, cache: FragmentCache | None = None) -> None:
        self.view = view
        self.cache = cache or FragmentCache()
        self.cache.rotate()
        # Per build: label maps are shared by a Deployment's replicas, and policy
        # resolution depends only on (namespace, labels).
        self._items_memo: dict[int, tuple[tuple[str, str], ...]] = {}
        self._resolved: dict[tuple[str, Hashable], tuple[str, str, list[AuthorizationPolicy]]] = {}
        self._peer_auths = sorted(view.peer_authentications, key=lambda p: (p.namespace, p.name))

    def _items(self, d: dict[str, str]) -> tuple[tuple[str, str], ...]:
        key = id(d)
        found = self._items_memo.get(key)
        if found is None:
            found = self._items_memo[key] = tuple(sorted(d.items()))
        return found

    def _resolve(self, pod: PodView) -> tuple[str, str, list[AuthorizationPolicy]]:
        key = (pod.namespace, self._items(pod.labels))
        found = self._resolved.get(key)
        if found is None:
            mode, decided_by = effective_mtls(pod.namespace, pod.labels, self._peer_auths)
            applied = workload_authorizations(pod.namespace, pod.labels,
                                              self.view.authorization_policies)
            found = self._resolved[key] = (mode, decided_by, applied)
        return found

    def _wp_key(self, ref: Ref | None) -> Hashable:
        if ref is None:
            return None
        wp = self.view.waypoints.get(ref)
        return (ref, tuple(wp.addresses) if wp else (), wp is not None)  # identity iff wp

    def _workload(self, pod: PodView) -> bytes:
        key = ("w", pod.uid, tuple(pod.addresses), pod.phase, pod.enrolled, pod.node,
               self._wp_key(pod.waypoint), self._items(pod.labels), tuple(pod.excluded_ports),
               pod.native_hbone)
        return self.cache.get(key, lambda: workload(self.view, pod))

    def _service(self, sv: ServiceView) -> bytes:
        key = ("s", id(sv.service), tuple(sv.vips), self._wp_key(sv.waypoint),
               tuple((e.workload_uid, tuple(e.addresses), tuple(e.ports), e.node, e.enrolled,
                      e.identity) for e in sv.endpoints))
        return self.cache.get(key, lambda: service(self.view, sv), keep=sv.service)

    def _pod_to_run(self, pod: PodView) -> bytes:
        key = ("p", pod.uid, pod.enrolled, self._items(pod.labels),
               self._items(pod.annotations),
               tuple(pod.excluded_ports))
        return self.cache.get(key, lambda: pod_to_run(pod))

    @cached_property
    def _mesh_wide(self) -> bytes:
        v = self.view
        return b"".join(
            [_field(_WORKLOADS, self._workload(p)) for _, p in sorted(v.pods.items())]
            + [_field(_SERVICES, self._service(s)) for _, s in sorted(v.services.items())])

    def node(self, node: str) -> SnapshotContent:
        v = self.view
        local = sorted(v.pods_by_node.get(node, []), key=lambda p: p.ref)
        policies: dict[str, AuthorizationPolicy] = {}
        fragments = []
        for pod in local:
            mode, decided_by, applied = self._resolve(pod)
            names = tuple(f"{p.namespace}/{p.name}" for p in applied)
            for name, p in zip(names, applied, strict=True):
                policies[name] = p
            fragments.append(_field(_WORKLOAD_POLICIES, self.cache.get(
                ("wp", pod.uid, mode, decided_by, names),
                lambda pod=pod, mode=mode, decided_by=decided_by, names=names:  # type: ignore[misc]
                pb.WorkloadPolicy(workload_uid=pod.uid, mtls_mode=_MTLS[mode],
                                  mtls_policy=decided_by, authorizations=names))))
        specific = pb.Snapshot(
            kind=pb.NODE, trust_domain=v.trust_domain,
            authorizations=[authorization(policies[k]) for k in sorted(policies)],
        )
        pods = b"".join(_field(_PODS_TO_RUN, self._pod_to_run(p)) for p in local)
        return SnapshotContent(
            pb.NODE, (self._mesh_wide, pods, b"".join(fragments), _ser(specific)))

    def waypoint(self, namespace: str, name: str) -> SnapshotContent:
        v = self.view
        wp = v.waypoints.get((namespace, name))
        served: list[Ref] = sorted(wp.services) if wp else []
        served_set = set(served)
        routes = sorted(
            (r for r in v.routes
             if any(p.is_service and (p.namespace or r.namespace, p.name) in served_set
                    for p in r.spec.parent_refs)),
            key=lambda r: (r.namespace, r.name))
        needed: set[Ref] = set(served)
        for r in routes:
            for rule in r.spec.rules:
                for b in rule.backend_refs:
                    needed.add((b.namespace or r.namespace, b.name))
                for f in rule.filters:
                    if f.request_mirror:
                        b = f.request_mirror.backend_ref
                        needed.add((b.namespace or r.namespace, b.name))
        services = [v.services[ref] for ref in sorted(needed) if ref in v.services]
        # Every workload, as nodes get them: the waypoint names its backends and, by the
        # tunnel's source address, its callers (source_workload, mesh.telemetry).
        workloads = [p for _, p in sorted(v.pods.items())]
        tps = sorted(
            (t for t in v.traffic_policies
             if any((t.namespace, ref.name) in served_set for ref in t.spec.target_refs)),
            key=lambda t: (t.namespace, t.name))
        authz = waypoint_authorizations(namespace, name, served, v.authorization_policies)
        msg = pb.Snapshot(
            kind=pb.WAYPOINT, trust_domain=v.trust_domain,
            waypoint=pb.WaypointInfo(
                namespace=namespace, name=name, identity=wp.identity if wp else "",
                services=[f"{ns}/{n}" for ns, n in served]),
            routes=[route(r) for r in routes],
            traffic_policies=[traffic_policy(t) for t in tps],
            authorizations=[authorization(p) for p in authz],
        )
        shared = b"".join(
            [_field(_WORKLOADS, self._workload(p)) for p in workloads]
            + [_field(_SERVICES, self._service(sv)) for sv in services])
        return SnapshotContent(pb.WAYPOINT, (shared, _ser(msg)))

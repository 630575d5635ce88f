"""How one request would travel and be decided, computed from the snapshots the
controller pushes, with the data path's own sans-I/O decision code:
nodeagent.outbound_plan (capture -> service/endpoint/waypoint), nodeagent.authz
(L4 policy at the destination's node proxy, compiled by nodeagent.state), and at the
waypoint its own config builder (waypoint.config.build: served services, routes,
which policies apply to which service) followed by its pipeline's stages in order:
normalize (mesh.http_paths), resolve the service, authorize (waypoint.authz), route.
Both authz modules are the mesh's one engine (mesh.authz). Using the same code is
what makes the answer trustworthy: explain cannot drift from what the proxies do;
tests/unit/test_explain_property.py checks it on generated configs.

Pure: snapshots come in through a callable, so tests build them by hand."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ambientctl.errors import AmbientctlError, BadArgument
from ambientctl.refs import Destination
from mesh.api import config_pb2 as pb
from mesh.http_paths import RequestNormalizationError, normalize_request
from mesh.ports import HBONE_PORT, OUTBOUND_PORT
from nodeagent import authz as l4
from nodeagent.balance import EndpointPicker, backends_for
from nodeagent.errors import NoHealthyEndpoint, WaypointUnavailable
from nodeagent.outbound_plan import Hop, Transport, plan
from nodeagent.proxy import delivery
from nodeagent.state import ProxyState
from waypoint import authz as l7
from waypoint.config import WaypointConfig, build, split_hostport
from waypoint.errors import RouteConfigError
from waypoint.messages import RequestHead

SnapshotSource = Callable[[str], pb.Snapshot]  # node name or "ns/waypoint" -> snapshot


@dataclass(frozen=True)
class ExplainRequest:
    source: tuple[str, str]  # (namespace, pod)
    destination: Destination
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Step:
    stage: str
    detail: str
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Explanation:
    source: dict[str, Any]
    destination: dict[str, Any]
    steps: list[Step] = field(default_factory=list)
    allowed: bool = True
    decided_by: str = ""
    reason: str = ""
    route: dict[str, Any] | None = None
    backends: list[dict[str, Any]] = field(default_factory=list)

    def add(self, stage: str, detail: str, **facts: Any) -> None:
        self.steps.append(Step(stage, detail, facts))

    def deny(self, decided_by: str, reason: str) -> None:
        if self.allowed:
            self.allowed, self.decided_by, self.reason = False, decided_by, reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "destination": self.destination,
            "verdict": {"allowed": self.allowed, "decidedBy": self.decided_by,
                        "reason": self.reason},
            "route": self.route, "backends": self.backends,
            "steps": [{"stage": s.stage, "detail": s.detail, **({"facts": s.facts}
                                                                  if s.facts else {})}
                      for s in self.steps],
        }


class ExplainError(AmbientctlError):
    pass


# ---- helpers -----------------------------------------------------------------------

def _key(obj: Any) -> str:
    return f"{obj.namespace}/{obj.name}"


def _find_workload(state: ProxyState, ns: str, name: str) -> pb.Workload | None:
    return next((w for w in state.workloads_by_uid.values()
                 if w.namespace == ns and w.name == name), None)


def _v4_first(addresses: Sequence[str]) -> str:
    return next((a for a in addresses if ":" not in a), addresses[0] if addresses else "")


def _mode_name(mode: int) -> str:
    return "STRICT" if mode == pb.STRICT else "PERMISSIVE"


@dataclass(frozen=True)
class Target:
    kind: str  # "service" | "pod" | "ip"
    ip: str
    port: int
    service: pb.Service | None = None
    workload: pb.Workload | None = None

    def describe(self) -> str:
        if self.service is not None:
            return f"service {_key(self.service)} ({self.ip}:{self.port})"
        if self.workload is not None:
            return f"pod {_key(self.workload)} ({self.ip}:{self.port})"
        return f"{self.ip}:{self.port}"


def resolve(state: ProxyState, src_ns: str, dest: Destination) -> Target:
    """A service (name, name.ns, FQDN, ns/name), a pod (ns/pod) or an IP."""
    services = list(state.services_by_key.values())
    svc: pb.Service | None = None
    wl: pb.Workload | None = None
    if dest.ip is not None:
        target = state.service_at(dest.ip, dest.port or 0)
        if target is not None:
            svc = target.service
        else:
            wl = state.workload_at(dest.ip)
        ip = dest.ip
    else:
        host = dest.host
        if "/" in host:
            svc = state.services_by_key.get(host)
            if svc is None:
                ns, _, name = host.partition("/")
                wl = _find_workload(state, ns, name)
        else:
            matches = [s for s in services if host in s.hostnames]
            local = [s for s in matches if s.namespace == src_ns]
            svc = (local or matches)[0] if matches else None
        if svc is None and wl is None:
            known = sorted(state.services_by_key)
            raise ExplainError(
                f"no service or pod {host!r} is known to the mesh",
                f"services: {', '.join(known) or 'none'}; pods are written NS/POD")
        if svc is not None:
            if not svc.vips:
                raise ExplainError(f"service {_key(svc)} has no cluster IP yet",
                                   "wait for the controller to allocate one")
            ip = _v4_first(svc.vips)
        else:
            assert wl is not None
            if not wl.addresses:
                raise ExplainError(f"pod {_key(wl)} has no IP yet (phase {wl.phase})",
                                   "wait until `ambientctl get pods -A` shows it Running")
            ip = _v4_first(wl.addresses)
    port = dest.port
    if port is None:
        if svc is None or not svc.ports:
            raise BadArgument(f"{dest.host}: give a port",
                              "write NS/POD:PORT, e.g. demo/inventory-0:9000")
        port = svc.ports[0].port
    elif svc is not None and not any(p.port == port for p in svc.ports):
        ports = ", ".join(str(p.port) for p in svc.ports)
        raise ExplainError(f"service {_key(svc)} has no port {port}", f"its ports: {ports}")
    kind = "service" if svc is not None else "pod" if wl is not None else "ip"
    return Target(kind, ip, port, svc, wl)


def _display(service_key: str) -> str:
    """A route backend as users write hosts: "ns/name" -> "name.ns"."""
    ns, _, name = service_key.partition("/")
    return f"{name}.{ns}"


# ---- the walk ----------------------------------------------------------------------

class Explainer:
    def __init__(self, snapshots: SnapshotSource) -> None:
        self._fetch = snapshots
        self._states: dict[str, ProxyState] = {}
        self._raw: dict[str, pb.Snapshot] = {}
        self._waypoints: dict[str, WaypointConfig] = {}

    def waypoint_config(self, name: str) -> WaypointConfig:
        """The waypoint's tables, built by the waypoint's own `build`."""
        if name not in self._waypoints:
            try:
                self._waypoints[name] = build(self.raw(name))
            except RouteConfigError as e:
                raise ExplainError(f"waypoint {name} refuses its snapshot: {e}",
                                   "it keeps serving its last good config; fix the "
                                   "object named") from None
        return self._waypoints[name]

    def state(self, proxy: str) -> ProxyState:
        if proxy not in self._states:
            snap = self._fetch(proxy)
            self._raw[proxy] = snap
            self._states[proxy] = ProxyState.from_snapshot(snap)
        return self._states[proxy]

    def raw(self, proxy: str) -> pb.Snapshot:
        self.state(proxy)
        return self._raw[proxy]

    def explain(self, req: ExplainRequest, src_node: str) -> Explanation:
        src_ns, src_name = req.source
        state = self.state(src_node)
        src = _find_workload(state, src_ns, src_name)
        if src is None:
            raise ExplainError(f"pod {src_ns}/{src_name} is not known to the controller",
                               "list pods with `ambientctl get pods -A`")
        if not src.addresses:
            raise ExplainError(f"pod {src_ns}/{src_name} has no IP yet (phase {src.phase})",
                               "wait until it is Running")
        src_ip = _v4_first(src.addresses)
        target = resolve(state, src_ns, req.destination)
        out = Explanation(
            source={"pod": f"{src_ns}/{src_name}", "node": src.node, "ip": src_ip,
                    "enrolled": src.enrolled, "identity": state.workload_identity(src)},
            destination={"input": req.destination.host, "kind": target.kind,
                         "address": f"{target.ip}:{target.port}", "path": req.destination.path,
                         **({"service": _key(target.service)} if target.service else {}),
                         **({"pod": _key(target.workload)} if target.workload else {})})
        captured = src.enrolled and target.port not in src.excluded_ports and not src.native_hbone
        if not captured:
            why = ("its namespace is not enrolled" if not src.enrolled else
                   f"port {target.port} is excluded" if target.port in src.excluded_ports
                   else "it speaks HBONE itself")
            out.add("capture", f"not captured: {why}; {src_ns}/{src_name} connects to "
                    f"{target.describe()} directly, in plaintext, with no identity")
            self._plaintext(out, state, target, src_ip)
            return out
        out.add("capture", f"captured on {src.node}: connect() to {target.ip}:{target.port} is "
                f"redirected to the node proxy (127.0.0.1:{OUTBOUND_PORT} in the pod's netns)",
                identity=state.workload_identity(src))
        try:
            hops = plan(state, EndpointPicker(), target.ip, target.port, 0.0)
        except NoHealthyEndpoint as e:
            out.add("resolve", str(e))
            out.deny("", f"service has no ready endpoint for port {target.port}")
            return out
        except WaypointUnavailable as e:  # never bypassed: the node proxy resets it
            out.add("waypoint", f"{target.describe()}: {e}", waypoint=e.waypoint)
            out.deny(f"waypoint {e.waypoint}", "waypoint unavailable: the node proxy "
                     "refuses (RST) rather than skip its L7 policy")
            return out
        first = hops[0]
        principal = state.workload_identity(src)
        if first.via_waypoint:
            self._via_waypoint(out, req, state, target, first, principal, src_ip)
        elif first.transport is Transport.PASSTHROUGH:
            out.add("resolve", f"{target.ip}:{target.port} is outside the mesh: passed through "
                    "untouched (no mTLS, no policy)")
        else:
            what = (f"service {_key(target.service)}: {len(hops)} endpoint(s), round robin"
                    if target.service else f"pod {target.describe()}")
            out.add("resolve", what, endpoints=[h.authority for h in hops])
            for hop in hops:
                self._to_endpoint(out, hop, principal, src_ip, "node proxy")
        return out

    def _plaintext(self, out: Explanation, state: ProxyState, target: Target, src_ip: str
                   ) -> None:
        if target.service is not None:
            svc_port = next(p for p in target.service.ports if p.port == target.port)
            backends = backends_for(target.service, svc_port, prefer_v6=False)
            out.add("resolve", f"service {_key(target.service)} -> "
                    f"{len(backends)} endpoint(s)", endpoints=[f"{b.address}:{b.port}"
                                                               for b in backends])
            hops = [Hop(Transport.PLAINTEXT, b.address, b.port, f"{b.address}:{b.port}",
                        state.workloads_by_uid.get(b.endpoint.workload_uid), _key(target.service),
                        target_port=b.port) for b in backends]
            if not hops:
                out.deny("", "the service has no ready endpoint")
        else:
            hops = [Hop(Transport.PLAINTEXT, target.ip, target.port,
                        f"{target.ip}:{target.port}", target.workload, None,
                        target_port=target.port)]
        for hop in hops:
            self._to_endpoint(out, hop, None, src_ip, "node proxy")

    def _to_endpoint(self, out: Explanation, hop: Hop, principal: str | None, src_ip: str,
                     via: str) -> bool:
        """Inbound at the destination's node proxy: mTLS mode, then L4 policy."""
        wl = hop.workload
        entry: dict[str, Any] = {"address": hop.authority, "transport": hop.transport.value}
        out.backends.append(entry)
        if wl is None:
            out.add("deliver", f"{hop.authority}: not a mesh workload, delivered as is")
            return True
        entry.update({"pod": _key(wl), "node": wl.node})
        if not (wl.enrolled or wl.native_hbone):
            out.add("deliver", f"{_key(wl)} is not in the mesh: delivered in plaintext, "
                    "no policy applies")
            entry["allowed"] = True
            return True
        dst_state = self.state(wl.node)
        dst_id = dst_state.workload_identity(wl)
        policy = dst_state.policies.get(wl.uid)
        mode = dst_state.mtls_mode(wl)
        if principal is not None:
            out.add("mtls", f"HBONE (HTTP/2 CONNECT over mTLS 1.3) to {hop.address}:{HBONE_PORT}, "
                    f"authority {hop.authority}: {principal} -> {dst_id}",
                    client=principal, server=dst_id)
        try:  # the handlers' own check: only the pod's waypoint may deliver to it
            delivery.check_waypoint(wl, principal)
        except delivery.WaypointBypassed as e:
            out.add("waypoint", f"{via} of {wl.node} for {_key(wl)}: {e}",
                    waypoint=e.waypoint)
            entry["allowed"], entry["decidedBy"] = False, f"waypoint {e.waypoint}"
            out.deny(f"waypoint {e.waypoint}", str(e))
            return False
        if principal is None and mode == pb.STRICT:
            name = policy.mtls_policy if policy and policy.mtls_policy else "default"
            out.add("inbound", f"{_key(wl)} on {wl.node}: plaintext refused, mTLS mode STRICT "
                    f"(PeerAuthentication {name})")
            entry["allowed"] = False
            out.deny(f"PeerAuthentication {name}", f"STRICT mTLS refuses plaintext from {src_ip}")
            return False
        if principal is None:
            out.add("inbound", f"{_key(wl)} on {wl.node}: plaintext accepted (mTLS mode "
                    f"{_mode_name(mode)})")
        policies = [p.key for p in dst_state.authorizations_for(wl)]
        verdict = l4.authorize(dst_state, wl, principal, src_ip, hop.target_port)
        out.add("L4 policy", f"{via} of {wl.node} for {_key(wl)}: evaluated "
                f"{', '.join(policies) or 'no policies'} -> "
                f"{'ALLOW' if verdict.allowed else 'DENY'} ({verdict.reason})",
                evaluated=policies, decided_by=verdict.policy)
        entry["allowed"] = verdict.allowed
        entry["decidedBy"] = verdict.policy or ""
        if not verdict.allowed:
            out.deny(f"AuthorizationPolicy {verdict.policy}" if verdict.policy else "",
                     verdict.reason)
        elif verdict.policy and not out.decided_by:
            out.decided_by = f"AuthorizationPolicy {verdict.policy}"
            out.reason = verdict.reason
        return verdict.allowed

    def _via_waypoint(self, out: Explanation, req: ExplainRequest, state: ProxyState,
                      target: Target, hop: Hop, principal: str, src_ip: str) -> None:
        svc = target.service
        wp_ref = svc.waypoint if svc is not None else target.workload.waypoint  # type: ignore[union-attr]
        wp_name = f"{wp_ref.namespace}/{wp_ref.name}"
        wp_id = wp_ref.identity or (hop.workload.identity if hop.workload else "")
        out.add("resolve", f"{target.describe()} uses waypoint {wp_name}: HBONE to "
                f"{hop.address}:{hop.port}, authority {hop.authority}",
                waypoint=wp_name)
        out.add("mtls", f"HBONE (mTLS 1.3): {principal} -> {wp_id}", client=principal,
                server=wp_id)
        cfg = self.waypoint_config(wp_name)
        wp_state = self.state(wp_name)
        path = req.destination.path
        host = req.destination.host if "/" not in req.destination.host else (
            f"{svc.name}.{svc.namespace}" if svc else req.destination.host)
        head = RequestHead(req.method, path, host, [(k.lower(), v) for k, v in req.headers])
        # The waypoint's pipeline, stage by stage (waypoint/pipeline.py): normalize,
        # resolve_service, authorize, route.
        try:
            head.method, head.target = normalize_request(head.method, head.target)
        except RequestNormalizationError as e:
            out.add("L7 policy", f"waypoint {wp_name}: request refused before any "
                    f"decision (400): {e}")
            out.deny(f"waypoint {wp_name}", f"bad request (400): {e}")
            return
        found = cfg.resolve(hop.authority, head.authority)
        if found is None:
            out.add("route", f"waypoint {wp_name} serves no service for {hop.authority} "
                    f"(host {head.authority}): 404")
            out.deny(f"waypoint {wp_name}", "no service of this waypoint matches (404)")
            return
        service, port = found
        if port is None:
            port = split_hostport(hop.authority)[1]
        if port is None:
            port = service.ports[0].port if service.ports else None
        policies = cfg.authz.get(service.key, ())
        facts = l7.RequestFacts(principal, head.method, head.path, head.authority, port,
                                src_ip)
        verdict = l7.evaluate(policies, facts)
        out.add("L7 policy", f"waypoint {wp_name}: {head.method} {head.path} evaluated "
                f"{', '.join(p.key for p in policies) or 'no policies'} -> "
                f"{'ALLOW' if verdict.allowed else 'DENY'} ({verdict.reason})",
                evaluated=[p.key for p in policies], decided_by=verdict.policy)
        if not verdict.allowed:
            out.deny(f"AuthorizationPolicy {verdict.policy}" if verdict.policy else
                     "AuthorizationPolicy", verdict.reason)
            return
        if verdict.policy:
            out.decided_by, out.reason = f"AuthorizationPolicy {verdict.policy}", verdict.reason
        table = cfg.routes.get(service.key)
        sel = table.select(head, port) if table is not None else None
        if sel is None:
            out.add("route", f"no rule of the HTTPRoutes of {service.key} matches: 404")
            out.deny("HTTPRoute", "no route rule matches (404)")
            return
        backends = list(sel.rule.backends)
        rule_name = (sel.rule.name if sel.rule.route
                     else "default (no HTTPRoute): the service itself")
        total = sum(b.weight for b in backends) or 1
        out.route = {"rule": rule_name, "backends": [
            {"service": _display(b.service), "port": b.port, "weight": b.weight,
             "percent": round(100 * b.weight / total, 1)} for b in backends]}
        split = ", ".join(f"{_display(b.service)}:{b.port or port} "
                          f"{100 * b.weight / total:.0f}%" for b in backends)
        out.add("route", f"rule {rule_name} -> {split}", rule=rule_name)
        any_allowed = False
        for b in backends:
            bsvc = wp_state.services_by_key.get(b.service)
            if bsvc is None or b.weight == 0:
                continue
            bport = b.port or port
            sp = next((p for p in bsvc.ports if p.port == bport), None)
            if sp is None:
                out.add("deliver", f"{_display(b.service)} has no port {bport}")
                continue
            for backend in backends_for(bsvc, sp, prefer_v6=False):
                wl = wp_state.workloads_by_uid.get(backend.endpoint.workload_uid)
                hop2 = Hop(Transport.HBONE if backend.endpoint.enrolled else Transport.PLAINTEXT,
                           backend.address, HBONE_PORT, f"{backend.address}:{backend.port}", wl,
                           _key(bsvc), target_port=backend.port)
                ok = self._to_endpoint(out, hop2, wp_id, _v4_first(wp_ref.addresses) or src_ip,
                                       "node proxy")
                out.backends[-1]["service"] = _key(bsvc)
                any_allowed = any_allowed or ok
        if not any_allowed and out.allowed:
            out.deny("", "no backend endpoint is ready")

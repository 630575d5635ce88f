"""The merged, resolved view of the cluster: pods with their nodes, identities and
enrollment; services with VIPs, endpoints and waypoints; waypoints with addresses.

Built by one pure function from the stored objects and the runtime facts (nodes,
placements, VIPs, reported pod status), so it can be tested and benchmarked alone."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from mesh.config import (
    AuthorizationPolicy,
    Deployment,
    EndpointSlice,
    Gateway,
    HTTPRoute,
    Namespace,
    ObjectKey,
    PeerAuthentication,
    Pod,
    Resource,
    Service,
    TrafficPolicy,
)
from mesh.config.annotations import (
    DATAPLANE_AMBIENT,
    DATAPLANE_MODE,
    DATAPLANE_NONE,
    DEPLOYMENT_LABEL,
    EXCLUDE_PORTS,
    GATEWAY_NAME_LABEL,
    SERVICE_NAME_LABEL,
    USE_WAYPOINT,
    USE_WAYPOINT_NONE,
    WAYPOINT_CLASS,
    WAYPOINT_FOR,
    lookup,
    parse_port_list,
    waypoint_args,
)
from mesh.config.core import PodSpec
from mesh.ports import HBONE_PORT, METRICS_PORT

Ref = tuple[str, str]
_UID_NS = uuid.UUID("6f0c1d2e-8a53-4e1b-9a57-3d7c2f0b9e11")


@dataclass(frozen=True)
class NodeRecord:
    name: str
    pod_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodState:
    """What a node agent reported about one pod."""

    uid: str
    node: str
    ipv4: str = ""
    ipv6: str = ""
    phase: str = "Pending"
    message: str = ""


@dataclass
class PodView:
    namespace: str
    name: str
    uid: str
    node: str | None
    service_account: str
    identity: str
    enrolled: bool
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: PodSpec
    excluded_ports: list[int]
    waypoint: Ref | None
    native_hbone: bool
    origin: str
    phase: str = "Pending"
    addresses: list[str] = field(default_factory=list)

    @property
    def ref(self) -> Ref:
        return (self.namespace, self.name)

    @property
    def ready(self) -> bool:
        return self.phase == "Running" and bool(self.addresses)

    def to_resource(self) -> dict[str, object]:
        """Kubernetes-style Pod with spec.nodeName and status.podIP."""
        meta: dict[str, object] = {
            "name": self.name, "namespace": self.namespace, "uid": self.uid,
            "labels": self.labels, "annotations": self.annotations,
        }
        spec = self.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
        if self.node:
            spec["nodeName"] = self.node
        status: dict[str, object] = {"phase": self.phase}
        if self.addresses:
            status["podIP"] = self.addresses[0]
            status["podIPs"] = [{"ip": a} for a in self.addresses]
        meta["ownerKind"] = self.origin
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
                "status": status}


@dataclass
class EndpointView:
    workload_uid: str
    addresses: list[str]
    ports: list[tuple[int, int]]
    node: str
    enrolled: bool
    identity: str


@dataclass
class ServiceView:
    service: Service
    vips: list[str]
    hostnames: list[str]
    endpoints: list[EndpointView]
    waypoint: Ref | None

    @property
    def ref(self) -> Ref:
        return (self.service.namespace, self.service.name)


@dataclass
class WaypointView:
    gateway: Gateway
    identity: str
    services: list[Ref]
    addresses: list[str]

    @property
    def ref(self) -> Ref:
        return (self.gateway.namespace, self.gateway.name)


@dataclass
class ClusterView:
    trust_domain: str
    namespaces: dict[str, Namespace]
    enrolled_namespaces: set[str]
    pods: dict[Ref, PodView]
    services: dict[Ref, ServiceView]
    waypoints: dict[Ref, WaypointView]
    nodes: dict[str, NodeRecord]
    peer_authentications: list[PeerAuthentication]
    authorization_policies: list[AuthorizationPolicy]
    routes: list[HTTPRoute]
    traffic_policies: list[TrafficPolicy]
    pods_by_node: dict[str, list[PodView]] = field(default_factory=dict)


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def hostnames(namespace: str, name: str) -> list[str]:
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc.cluster.local"]


@dataclass(frozen=True)
class DesiredPod:
    """A pod the cluster should run, before placement: written, or derived from a
    Deployment or a waypoint Gateway."""

    namespace: str
    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: PodSpec
    origin: str

    @cached_property
    def ref(self) -> Ref:
        return (self.namespace, self.name)


def waypoint_pod(gateway: Gateway, controller_addr: str) -> DesiredPod:
    ns, name = gateway.namespace, gateway.name
    spec = PodSpec.model_validate({
        "serviceAccountName": name,
        "containers": [{
            "name": "waypoint",
            # The node agent (kubelet role) gives the pod AMBIENT_CONTROLLER and
            # AMBIENT_TOKEN_FILE: only the node knows how its pods reach the controller.
            "command": ["ambient-waypoint", "--name", name, "--namespace", ns,
                        *waypoint_args(gateway.metadata.annotations)],
            "ports": [{"name": "hbone", "containerPort": HBONE_PORT},
                      {"name": "metrics", "containerPort": METRICS_PORT}],
        }],
    })
    return DesiredPod(
        ns, name,
        labels={GATEWAY_NAME_LABEL: name, WAYPOINT_FOR: "service"},
        annotations={DATAPLANE_MODE: DATAPLANE_NONE},
        spec=spec, origin="Gateway",
    )


def desired_pods(objects: Iterable[Resource], controller_addr: str) -> list[DesiredPod]:
    """Written pods first; derived pods never replace a written one of the same name."""
    out: dict[Ref, DesiredPod] = {}
    derived: list[DesiredPod] = []
    for obj in objects:
        if isinstance(obj, Pod):
            out[(obj.namespace, obj.name)] = DesiredPod(
                obj.namespace, obj.name, obj.metadata.labels, obj.metadata.annotations,
                obj.spec, "Pod")
        elif isinstance(obj, Deployment):
            tmpl = obj.spec.template
            labels = {**tmpl.metadata.labels, DEPLOYMENT_LABEL: obj.name}
            for i in range(obj.spec.replicas):
                derived.append(DesiredPod(
                    obj.namespace, f"{obj.name}-{i}", labels, tmpl.metadata.annotations,
                    tmpl.spec, "Deployment"))
        elif isinstance(obj, Gateway) and obj.spec.gateway_class_name == WAYPOINT_CLASS:
            derived.append(waypoint_pod(obj, controller_addr))
    for pod in derived:
        out.setdefault(pod.ref, pod)
    return list(out.values())


def _spec_digest(spec: PodSpec, cache: dict[int, tuple[PodSpec, str]]) -> str:
    """Cached by id(spec); the entry holds the spec so its id cannot be reused."""
    found = cache.get(id(spec))
    if found is None:
        data = {
            "sa": spec.service_account_name,
            "containers": [c.model_dump(mode="json", exclude_none=True) for c in spec.containers],
        }
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
        found = cache[id(spec)] = (spec, digest)
    return found[1]


def pod_uid(namespace: str, name: str, node: str | None, digest: str) -> str:
    """Stable across controller restarts; changes when the runnable spec or node does,
    which tells the node agent to recreate the pod."""
    return str(uuid.uuid5(_UID_NS, f"{namespace}/{name}/{node or ''}/{digest}"))


def is_enrolled(ns: Namespace | None, labels: Mapping[str, str], annotations: Mapping[str, str]
                ) -> bool:
    if lookup(labels, annotations, DATAPLANE_MODE) == DATAPLANE_NONE:
        return False
    if ns is None:
        return False
    return lookup(ns.metadata.labels, ns.metadata.annotations, DATAPLANE_MODE) == DATAPLANE_AMBIENT


def _excluded_ports(annotations: Mapping[str, str]) -> list[int]:
    raw = annotations.get(EXCLUDE_PORTS)
    if not raw:
        return []
    try:
        return parse_port_list(raw)
    except ValueError:
        return []


def _resolve_target(port_target: int | str, spec: PodSpec) -> int | None:
    if isinstance(port_target, int):
        return port_target
    return spec.named_port(port_target)


def build_view(
    objects: Iterable[Resource],
    *,
    trust_domain: str,
    nodes: Mapping[str, NodeRecord],
    placements: Mapping[Ref, str],
    vips: Mapping[Ref, str],
    pod_states: Mapping[Ref, PodState],
    desired: Iterable[DesiredPod],
    uid_cache: dict[tuple[str, str, str | None, str], str] | None = None,
    digest_cache: dict[int, tuple[PodSpec, str]] | None = None,
) -> ClusterView:
    """The caches (owned by the caller, reused across builds) save recomputing the
    spec digests and UUIDs of unchanged pods."""
    uids = uid_cache if uid_cache is not None else {}
    digests = digest_cache if digest_cache is not None else {}
    objs = list(objects)
    namespaces = {o.name: o for o in objs if isinstance(o, Namespace)}
    enrolled_ns = {
        name for name, ns in namespaces.items()
        if lookup(ns.metadata.labels, ns.metadata.annotations, DATAPLANE_MODE)
        == DATAPLANE_AMBIENT
    }
    gateways = {(o.namespace, o.name): o for o in objs
                if isinstance(o, Gateway) and o.spec.gateway_class_name == WAYPOINT_CLASS}

    pods: dict[Ref, PodView] = {}
    by_node: dict[str, list[PodView]] = defaultdict(list)
    label_index: dict[str, dict[tuple[str, str], set[Ref]]] = defaultdict(lambda: defaultdict(set))
    for d in desired:
        node = placements.get(d.ref)
        uid_key = (d.namespace, d.name, node, _spec_digest(d.spec, digests))
        uid = uids.get(uid_key)
        if uid is None:
            uid = uids[uid_key] = pod_uid(*uid_key)
        own_wp = lookup(d.labels, d.annotations, USE_WAYPOINT)
        view = PodView(
            namespace=d.namespace, name=d.name, uid=uid, node=node,
            service_account=d.spec.service_account_name,
            identity=spiffe_id(trust_domain, d.namespace, d.spec.service_account_name),
            enrolled=is_enrolled(namespaces.get(d.namespace), d.labels, d.annotations),
            labels=d.labels, annotations=d.annotations, spec=d.spec,
            excluded_ports=_excluded_ports(d.annotations),
            # Kept even when no such Gateway exists (deleted, typo): the node proxy must
            # know the pod is bound to a waypoint so it refuses instead of bypassing it.
            waypoint=(d.namespace, own_wp) if own_wp and own_wp != USE_WAYPOINT_NONE
            else None,
            native_hbone=d.origin == "Gateway", origin=d.origin,
        )
        state = pod_states.get(d.ref)
        if state is not None and state.uid == uid and state.node == node:
            view.phase = state.phase
            view.addresses = [a for a in (state.ipv4, state.ipv6) if a]
        pods[d.ref] = view
        if node:
            by_node[node].append(view)
        idx = label_index[d.namespace]
        for kv in d.labels.items():
            idx[kv].add(d.ref)

    waypoints: dict[Ref, WaypointView] = {}
    for ref, gw in gateways.items():
        wp_pod = pods.get(ref)
        waypoints[ref] = WaypointView(
            gateway=gw, identity=spiffe_id(trust_domain, gw.namespace, gw.name), services=[],
            addresses=list(wp_pod.addresses) if wp_pod and wp_pod.ready else [],
        )

    slices: dict[Ref, list[EndpointSlice]] = defaultdict(list)
    for o in objs:
        if isinstance(o, EndpointSlice):
            slices[(o.namespace, o.metadata.labels[SERVICE_NAME_LABEL])].append(o)

    services: dict[Ref, ServiceView] = {}
    for o in objs:
        if not isinstance(o, Service):
            continue
        ref = (o.namespace, o.name)
        endpoints = (_selected_endpoints(o, pods, label_index[o.namespace])
                     if o.spec.selector is not None else _slice_endpoints(o, slices[ref]))
        wp = _service_waypoint(o, namespaces.get(o.namespace))
        if wp is not None and wp in waypoints:
            waypoints[wp].services.append(ref)
        vip = vips.get(ref)
        services[ref] = ServiceView(
            service=o, vips=[vip] if vip else [], hostnames=hostnames(o.namespace, o.name),
            endpoints=endpoints, waypoint=wp,
        )

    return ClusterView(
        trust_domain=trust_domain,
        namespaces=namespaces,
        enrolled_namespaces=enrolled_ns,
        pods=pods,
        services=services,
        waypoints=waypoints,
        nodes=dict(nodes),
        peer_authentications=[o for o in objs if isinstance(o, PeerAuthentication)],
        authorization_policies=[o for o in objs if isinstance(o, AuthorizationPolicy)],
        routes=[o for o in objs if isinstance(o, HTTPRoute)],
        traffic_policies=[o for o in objs if isinstance(o, TrafficPolicy)],
        pods_by_node=dict(by_node),
    )


def _selected_endpoints(
    svc: Service, pods: Mapping[Ref, PodView], index: Mapping[tuple[str, str], set[Ref]]
) -> list[EndpointView]:
    selector = svc.spec.selector or {}
    if not selector:
        return []
    sets = [index.get(kv, set()) for kv in selector.items()]
    refs = set.intersection(*sorted(sets, key=len)) if sets else set()
    out = []
    for ref in sorted(refs):
        pod = pods[ref]
        if not pod.ready or pod.node is None:
            continue
        ports = []
        for sp in svc.spec.ports:
            target = _resolve_target(sp.effective_target, pod.spec)
            if target is not None:
                ports.append((sp.port, target))
        out.append(EndpointView(pod.uid, list(pod.addresses), ports, pod.node, pod.enrolled,
                                pod.identity))
    return out


def _slice_endpoints(svc: Service, slices: Iterable[EndpointSlice]) -> list[EndpointView]:
    out = []
    for s in sorted(slices, key=lambda x: x.name):
        by_name = {p.name: p.port for p in s.ports}
        ports = []
        for sp in svc.spec.ports:
            target = sp.effective_target
            if isinstance(target, str):
                resolved = by_name.get(target)
            else:
                resolved = by_name.get(sp.name, target) if sp.name in by_name else target
            if resolved is not None:
                ports.append((sp.port, resolved))
        for ep in s.endpoints:
            if ep.conditions.ready:
                out.append(EndpointView("", list(ep.addresses), ports, ep.node_name or "",
                                        False, ""))
    return out


def _service_waypoint(svc: Service, ns: Namespace | None) -> Ref | None:
    value = lookup(svc.metadata.labels, svc.metadata.annotations, USE_WAYPOINT)
    if value is None and ns is not None:
        value = lookup(ns.metadata.labels, ns.metadata.annotations, USE_WAYPOINT)
    if not value or value == USE_WAYPOINT_NONE:
        return None
    # The binding stands even if the Gateway is gone: traffic is refused, not bypassed.
    return (svc.namespace, value)


def object_key(kind: str, ref: Ref) -> ObjectKey:
    return ObjectKey(kind, ref[0], ref[1])

"""Kubernetes objects -> the registry's config model (pure).

What differs from local mode is decided here, in one place:
- Pods are real: their node is spec.nodeName, their IP status.podIP, their phase
  Running only when the Ready condition holds. Unscheduled, host-network and finished
  pods are left out (the registry must never schedule a Kubernetes pod itself).
  Containers without a command get the image as a stand-in (nothing runs it).
- A waypoint's pods (label ambientmesh.io/waypoint=<gateway>) stand in for the
  Gateway under the Gateway's own name, which is how the registry finds a waypoint's
  address and how the CA finds the node its certificate may go to.
- EndpointSlices of Services with a selector are dropped: those endpoints come from
  the pods (with identities); slices only matter for selector-less Services.
- Gateways of other classes are ignored; an object that fails validation is refused
  whole and reported, and its last valid version stays in force. A refused security
  policy with no valid version to keep is replaced by a stand-in that grants nothing
  (mesh.config.standin), since leaving it out would fail open."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.config import ConfigError, ObjectKey, Resource, validate_document
from mesh.config.annotations import SERVICE_NAME_LABEL, WAYPOINT_CLASS
from mesh.config.standin import describe, is_stand_in, stand_in

WAYPOINT_POD_LABEL = "ambientmesh.io/waypoint"
_DONE_PHASES = ("Succeeded", "Failed")
_KEEP_META = ("name", "namespace", "labels", "annotations", "uid")
_CRD_KINDS = ("PeerAuthentication", "AuthorizationPolicy", "TrafficPolicy")


@dataclass(frozen=True)
class LivePod:
    """Where a Kubernetes pod runs and how it is doing, as a node agent would report it."""

    namespace: str
    name: str
    node: str
    ipv4: str
    ipv6: str
    phase: str

    @property
    def ref(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass
class Translation:
    objects: dict[ObjectKey, Resource] = field(default_factory=dict)
    pods: list[LivePod] = field(default_factory=list)
    # Refused objects: why, and what is in force instead (describe()).
    rejected: dict[ObjectKey, str] = field(default_factory=dict)
    in_force: dict[ObjectKey, str] = field(default_factory=dict)


def _meta(raw: Mapping[str, Any]) -> dict[str, Any]:
    meta = raw.get("metadata") or {}
    return {k: meta[k] for k in _KEEP_META if meta.get(k) is not None}


def _ips(status: Mapping[str, Any]) -> tuple[str, str]:
    addrs = [a.get("ip", "") for a in status.get("podIPs") or []] or [status.get("podIP") or ""]
    v4 = v6 = ""
    for a in addrs:
        try:
            version = ipaddress.ip_address(a).version
        except ValueError:
            continue
        if version == 4 and not v4:
            v4 = a
        elif version == 6 and not v6:
            v6 = a
    return v4, v6


def _ready(raw: Mapping[str, Any]) -> bool:
    status = raw.get("status") or {}
    if status.get("phase") != "Running" or (raw.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = status.get("conditions") or []
    ready = [c for c in conditions if c.get("type") == "Ready"]
    return not ready or ready[0].get("status") == "True"


def pod_document(raw: Mapping[str, Any], name: str | None = None) -> dict[str, Any] | None:
    """The registry's form of a Kubernetes pod, or None if the mesh has no use for it."""
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    if not spec.get("nodeName") or spec.get("hostNetwork") or status.get("phase") in _DONE_PHASES:
        return None
    containers = []
    for c in spec.get("containers") or []:
        containers.append({
            "name": c.get("name", "main"),
            "command": list(c.get("command") or [c.get("image") or c.get("name", "main")]),
            "ports": [{k: p[k] for k in ("containerPort", "name", "protocol") if k in p}
                      for p in c.get("ports") or []],
        })
    meta = _meta(raw)
    if name is not None:
        meta["name"] = name
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"containers": containers, "nodeName": spec["nodeName"],
                 "serviceAccountName": spec.get("serviceAccountName") or "default"},
    }


def _live(raw: Mapping[str, Any], doc: Mapping[str, Any]) -> LivePod:
    v4, v6 = _ips(raw.get("status") or {})
    meta = doc["metadata"]
    return LivePod(meta["namespace"], meta["name"], doc["spec"]["nodeName"], v4, v6,
                   "Running" if _ready(raw) and (v4 or v6) else "Pending")


def _waypoint_choice(pods: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """One replica speaks for the waypoint: a ready one first, then the oldest."""
    ranked = sorted(pods, key=lambda p: (not _ready(p),
                                         (p.get("metadata") or {}).get("creationTimestamp", ""),
                                         (p.get("metadata") or {}).get("name", "")))
    return ranked[0] if ranked else None


def translate(caches: Mapping[str, Iterable[dict[str, Any]]],
              previous: Mapping[ObjectKey, Resource] | None = None) -> Translation:
    """`caches` maps a kind to its objects as the API server returned them."""
    previous = previous or {}
    out = Translation()
    raw_docs: list[dict[str, Any]] = []
    for kind in ("Namespace", "Service", "Gateway", "HTTPRoute", "PeerAuthentication",
                 "AuthorizationPolicy", "TrafficPolicy"):
        for obj in caches.get(kind, ()):
            if kind == "Gateway" and (obj.get("spec") or {}).get("gatewayClassName") \
                    != WAYPOINT_CLASS:
                continue
            if kind == "Service" and (obj.get("spec") or {}).get("type") == "ExternalName":
                continue
            entry = {**obj, "metadata": _meta(obj)}
            if kind in _CRD_KINDS:
                entry.pop("status", None)  # written by us (refusal_status), not config
            raw_docs.append(entry)
    selected = {((o.get("metadata") or {}).get("namespace", ""), o["metadata"]["name"])
                for o in caches.get("Service", ()) if (o.get("spec") or {}).get("selector")}
    for obj in caches.get("EndpointSlice", ()):
        meta = obj.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if service is None or (meta.get("namespace", ""), service) in selected:
            continue
        raw_docs.append({**obj, "metadata": _meta(obj)})

    waypoint_pods: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for obj in caches.get("Pod", ()):
        meta = obj.get("metadata") or {}
        gateway = (meta.get("labels") or {}).get(WAYPOINT_POD_LABEL)
        if gateway:
            waypoint_pods.setdefault((meta.get("namespace", ""), gateway), []).append(obj)
            continue
        doc = pod_document(obj)
        if doc is not None:
            raw_docs.append(doc)
            out.pods.append(_live(obj, doc))
    for (_, gateway), replicas in sorted(waypoint_pods.items()):
        chosen = _waypoint_choice(p for p in replicas if pod_document(p) is not None)
        doc = pod_document(chosen, name=gateway) if chosen is not None else None
        if chosen is not None and doc is not None:
            raw_docs.append(doc)
            out.pods.append(_live(chosen, doc))

    for raw in raw_docs:
        try:
            res = validate_document(raw, f"kubernetes {raw.get('kind')}", 1)
        except ConfigError as e:
            meta = raw.get("metadata") or {}
            key = ObjectKey(str(raw.get("kind")), str(meta.get("namespace") or ""),
                            str(meta.get("name") or ""))
            issue = e.first
            reason = f"{issue.object_ref}: {issue.path}: {issue.reason}" if issue.path \
                else f"{issue.object_ref}: {issue.reason}"
            out.rejected[key] = reason
            kept = previous.get(key)
            if kept is None or is_stand_in(kept):
                kept = stand_in(raw, reason)
            if kept is not None:
                out.objects[key] = kept
            out.in_force[key] = describe(kept)
            continue
        out.objects[res.key] = res
    valid_pods = {(k.namespace, k.name) for k in out.objects if k.kind == "Pod"}
    out.pods = [p for p in out.pods if p.ref in valid_pods]
    return out

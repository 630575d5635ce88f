"""The kinds ambient-mesh understands, and the names the CLI accepts for them."""

from __future__ import annotations

from mesh.config.base import Resource
from mesh.config.core import Deployment, EndpointSlice, Namespace, Pod, Service
from mesh.config.gateway import Gateway, HTTPRoute
from mesh.config.security import AuthorizationPolicy, PeerAuthentication
from mesh.config.traffic import TrafficPolicy

KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls
    for cls in (
        Namespace, Pod, Deployment, Service, EndpointSlice, Gateway, HTTPRoute,
        PeerAuthentication, AuthorizationPolicy, TrafficPolicy,
    )
}

_ALIASES: dict[str, str] = {
    "ns": "Namespace", "po": "Pod", "deploy": "Deployment", "svc": "Service",
    "gtw": "Gateway", "gw": "Gateway", "pa": "PeerAuthentication",
    "ap": "AuthorizationPolicy", "tp": "TrafficPolicy",
}


def resolve_kind(name: str) -> type[Resource]:
    """Accept kubectl-style names: Pod, pod, pods, po. Raises KeyError with the choices."""
    low = name.lower()
    if low in _ALIASES:
        return KINDS[_ALIASES[low]]
    for kind, cls in KINDS.items():
        k = kind.lower()
        if low in (k, k + "s", k + "es") or (k.endswith("y") and low == k[:-1] + "ies"):
            return cls
    raise KeyError(f"unknown kind {name!r} (known: {', '.join(sorted(KINDS))})")

"""The user-facing configuration model (DESIGN §5): Kubernetes-style kinds validated
with pydantic, multi-document YAML loading, and typed ConfigError messages naming
file, document, object, field path and reason.

Owns validation only: it stores nothing, watches nothing and knows no proxies.

The names below load on first use (PEP 562): a process that needs only a constant
(`mesh.config.annotations`) does not pay for pydantic and the whole model (~11 MB of
the node proxy's memory)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mesh.config.base import LabelSelector, ObjectKey, ObjectMeta, Resource, duration_ms
    from mesh.config.core import Deployment, EndpointSlice, Namespace, Pod, Service
    from mesh.config.errors import ConfigError, ConfigIssue
    from mesh.config.gateway import Gateway, HTTPRoute
    from mesh.config.kinds import KINDS, resolve_kind
    from mesh.config.loader import Document, load_file, parse_documents, validate_document
    from mesh.config.security import AuthorizationPolicy, PeerAuthentication
    from mesh.config.traffic import TrafficPolicy

_HOMES = {
    "LabelSelector": "mesh.config.base",
    "ObjectKey": "mesh.config.base",
    "ObjectMeta": "mesh.config.base",
    "Resource": "mesh.config.base",
    "duration_ms": "mesh.config.base",
    "Deployment": "mesh.config.core",
    "EndpointSlice": "mesh.config.core",
    "Namespace": "mesh.config.core",
    "Pod": "mesh.config.core",
    "Service": "mesh.config.core",
    "ConfigError": "mesh.config.errors",
    "ConfigIssue": "mesh.config.errors",
    "Gateway": "mesh.config.gateway",
    "HTTPRoute": "mesh.config.gateway",
    "KINDS": "mesh.config.kinds",
    "resolve_kind": "mesh.config.kinds",
    "Document": "mesh.config.loader",
    "load_file": "mesh.config.loader",
    "parse_documents": "mesh.config.loader",
    "validate_document": "mesh.config.loader",
    "AuthorizationPolicy": "mesh.config.security",
    "PeerAuthentication": "mesh.config.security",
    "TrafficPolicy": "mesh.config.traffic",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


__all__ = [
    "KINDS",
    "AuthorizationPolicy",
    "ConfigError",
    "ConfigIssue",
    "Deployment",
    "Document",
    "EndpointSlice",
    "Gateway",
    "HTTPRoute",
    "LabelSelector",
    "Namespace",
    "ObjectKey",
    "ObjectMeta",
    "PeerAuthentication",
    "Pod",
    "Resource",
    "Service",
    "TrafficPolicy",
    "duration_ms",
    "load_file",
    "parse_documents",
    "resolve_kind",
    "validate_document",
]

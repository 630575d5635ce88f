"""The user-facing configuration model (DESIGN §5): Kubernetes-style kinds validated
with pydantic, multi-document YAML loading, and typed ConfigError messages naming
file, document, object, field path and reason.

Owns validation only: it stores nothing, watches nothing and knows no proxies."""

from mesh.config.base import LabelSelector, ObjectKey, ObjectMeta, Resource, duration_ms
from mesh.config.core import Deployment, EndpointSlice, Namespace, Pod, Service
from mesh.config.errors import ConfigError, ConfigIssue
from mesh.config.gateway import Gateway, HTTPRoute
from mesh.config.kinds import KINDS, resolve_kind
from mesh.config.loader import Document, load_file, parse_documents, validate_document
from mesh.config.security import AuthorizationPolicy, PeerAuthentication
from mesh.config.traffic import TrafficPolicy

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

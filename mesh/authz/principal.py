"""A caller's identity as authorization policies see it: the principal without its
spiffe:// scheme (Istio writes `cluster.local/ns/foo/sa/bar`) and its namespace.

The one place a SPIFFE ID is split for policy and telemetry. It parses strictly
(mesh.identity.spiffe): a string that is not a workload SPIFFE ID has no namespace,
and the engine denies it rather than guess one."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from mesh.identity.errors import InvalidSpiffeIdError
from mesh.identity.spiffe import SpiffeId

SCHEME = "spiffe://"


@dataclass(frozen=True, slots=True)
class Peer:
    principal: str  # trust-domain/ns/<namespace>/sa/<service-account>
    namespace: str


@lru_cache(maxsize=4096)  # a proxy sees few distinct callers; parsing is per request
def peer_of(identity: str) -> Peer | None:
    """The principal and namespace of a verified peer's SPIFFE ID; None when it is
    not a workload SPIFFE ID (no `spiffe://td/ns/<ns>/sa/<sa>` shape)."""
    try:
        sid = SpiffeId.parse(identity)
    except InvalidSpiffeIdError:
        return None
    return Peer(identity.removeprefix(SCHEME), sid.namespace)


def namespace_of(identity: str | None) -> str | None:
    """The namespace in a SPIFFE ID, None for no identity or one of another shape."""
    if not identity:
        return None
    peer = peer_of(identity)
    return peer.namespace if peer is not None else None


def bare_principal(pattern: str) -> str:
    """A principal as written in a policy, without the optional spiffe:// scheme."""
    return pattern.removeprefix(SCHEME)

"""The authorization decision, the same for the node proxy (L4), the waypoint (L7)
and `ambientctl explain`. Istio's order:

1. a DENY policy that matches denies (a policy that could not be compiled is a DENY
   of everything it selects, so it lands here);
2. no ALLOW policy applies: allowed;
3. an ALLOW policy matches: allowed; otherwise denied.

AUDIT and CUSTOM never reach a proxy (the config model refuses them, and a pushed
action other than ALLOW/DENY does not compile). Sans-I/O and pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from mesh.authz.model import Address, Facts, Layer, Policy
from mesh.authz.principal import peer_of

DENIED = "RBAC: access denied"


@dataclass(frozen=True, slots=True)
class Request:
    """What the policy may look at. `principal` is the SPIFFE ID of a peer whose
    certificate was verified (None: plaintext caller); L4 leaves method/path/host
    empty. Field order kept from the waypoint's former RequestFacts."""

    principal: str | None
    method: str = ""
    path: str = ""  # without the query string
    host: str = ""
    port: int | None = None
    source_ip: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    policy: str = ""  # "ns/name" of the deciding policy(ies), "" when none decided
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


NO_ALLOW_POLICY = Verdict(True, "", "no ALLOW policy applies")


def _address(ip: str | None) -> Address | None:
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # a dual-stack socket's view of a v4 peer
    return addr


def evaluate(policies: Iterable[Policy], request: Request, layer: Layer) -> Verdict:
    """Decide one connection (layer "L4") or request ("L7") against the policies that
    apply to its destination."""
    policies = tuple(policies)
    if not policies:
        return NO_ALLOW_POLICY
    principal = namespace = None
    if request.principal is not None:
        peer = peer_of(request.principal)
        if peer is None:
            return Verdict(False, "", f"{DENIED}: peer identity {request.principal!r} is "
                                      "not a workload SPIFFE ID")
        principal, namespace = peer.principal, peer.namespace
    facts = Facts(principal, namespace, _address(request.source_ip), request.port,
                  request.method.upper(), request.path, request.host)
    for p in policies:
        if p.action == "DENY" and p.matches(facts, layer):
            if p.error:
                return Verdict(False, p.key, f"{DENIED}: policy {p.key} could not be "
                                             f"compiled ({p.error}); it denies everything")
            return Verdict(False, p.key, f"{DENIED} by DENY policy {p.key}")
    allows = [p for p in policies if p.action == "ALLOW"]
    if not allows:
        return NO_ALLOW_POLICY
    for p in allows:
        if p.matches(facts, layer):
            return Verdict(True, p.key, f"allowed by ALLOW policy {p.key}")
    names = ", ".join(p.key for p in allows)
    return Verdict(False, names, f"{DENIED}: no rule of ALLOW policies {names} matches")

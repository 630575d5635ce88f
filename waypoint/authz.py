"""L7 AuthorizationPolicy evaluation at the waypoint (sans I/O), with Istio's
semantics so users' policies carry over:

1. If any DENY policy matches the request: deny.
2. If there is no ALLOW policy: allow.
3. If any ALLOW policy matches: allow; otherwise deny.

A policy matches when one of its rules matches; a rule matches when one of its
`from` entries and one of its `to` entries match (an absent list matches all); an
entry matches when every condition it sets holds. A policy with no rules matches
nothing (so an ALLOW policy with `spec: {}` denies everything). Principals are
compared without the spiffe:// prefix, as Istio writes them; "*" matches any
authenticated identity, never a plaintext caller."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _glob(pattern: str, value: str) -> bool:
    """Istio string match: exact, "prefix*", "*suffix" or "*"."""
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _any_glob(patterns: Iterable[str], value: str | None) -> bool:
    return value is not None and any(_glob(p, value) for p in patterns)


def _principal(p: str) -> str:
    return p.removeprefix("spiffe://")


def _namespace_of(principal: str | None) -> str | None:
    if principal is None:
        return None
    parts = principal.split("/")
    for i, part in enumerate(parts[:-1]):
        if part == "ns":
            return parts[i + 1]
    return None


@dataclass(frozen=True)
class RequestFacts:
    """What a policy may look at. source_principal is the peer's SPIFFE ID (None when
    the caller has no mesh identity)."""

    source_principal: str | None
    method: str
    path: str
    host: str
    port: int | None = None
    source_ip: str | None = None

    @property
    def principal(self) -> str | None:
        return _principal(self.source_principal) if self.source_principal else None


@dataclass(frozen=True)
class SourceCondition:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[Network, ...] = ()
    not_ip_blocks: tuple[Network, ...] = ()

    def matches(self, f: RequestFacts) -> bool:
        principal = f.principal
        if self.principals and not _any_glob(map(_principal, self.principals), principal):
            return False
        if self.not_principals and _any_glob(map(_principal, self.not_principals), principal):
            return False
        ns = _namespace_of(principal)
        if self.namespaces and not _any_glob(self.namespaces, ns):
            return False
        if self.not_namespaces and _any_glob(self.not_namespaces, ns):
            return False
        if self.ip_blocks or self.not_ip_blocks:
            ip = ipaddress.ip_address(f.source_ip) if f.source_ip else None
            if self.ip_blocks and (ip is None or not any(ip in n for n in self.ip_blocks)):
                return False
            if self.not_ip_blocks and ip is not None and any(ip in n for n in self.not_ip_blocks):
                return False
        return True


def _host_match(patterns: Iterable[str], host: str) -> bool:
    host = host.lower()
    bare = host.rsplit(":", 1)[0] if ":" in host and not host.endswith("]") else host
    return any(_glob(p.lower(), host) or _glob(p.lower(), bare) for p in patterns)


@dataclass(frozen=True)
class OperationCondition:
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()

    def matches(self, f: RequestFacts) -> bool:
        if self.ports and f.port not in self.ports:
            return False
        if self.not_ports and f.port in self.not_ports:
            return False
        if self.methods and not _any_glob(self.methods, f.method):
            return False
        if self.not_methods and _any_glob(self.not_methods, f.method):
            return False
        if self.paths and not _any_glob(self.paths, f.path):
            return False
        if self.not_paths and _any_glob(self.not_paths, f.path):
            return False
        if self.hosts and not _host_match(self.hosts, f.host):
            return False
        return not (self.not_hosts and _host_match(self.not_hosts, f.host))


@dataclass(frozen=True)
class AuthzRule:
    sources: tuple[SourceCondition, ...] = ()
    operations: tuple[OperationCondition, ...] = ()

    def matches(self, f: RequestFacts) -> bool:
        if self.sources and not any(s.matches(f) for s in self.sources):
            return False
        return not self.operations or any(o.matches(f) for o in self.operations)


@dataclass(frozen=True)
class AuthzPolicy:
    name: str  # "<namespace>/<name>"
    action: Literal["ALLOW", "DENY"]
    rules: tuple[AuthzRule, ...] = ()

    def matches(self, f: RequestFacts) -> bool:
        return any(r.matches(f) for r in self.rules)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    policy: str = ""  # the deciding policy, "" when none decided
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


ALLOWED_NO_POLICY = Verdict(True, reason="no ALLOW policy applies")


def evaluate(policies: Sequence[AuthzPolicy], facts: RequestFacts) -> Verdict:
    for p in policies:
        if p.action == "DENY" and p.matches(facts):
            return Verdict(False, p.name, f"RBAC: access denied by policy {p.name}")
    allows = [p for p in policies if p.action == "ALLOW"]
    if not allows:
        return ALLOWED_NO_POLICY
    for p in allows:
        if p.matches(facts):
            return Verdict(True, p.name, f"allowed by policy {p.name}")
    return Verdict(False, "", "RBAC: access denied (no ALLOW policy matched)")

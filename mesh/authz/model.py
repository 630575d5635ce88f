"""The compiled policy model: what `compile_policy` makes of a pushed Authorization,
once per snapshot, so that a connection or request only compares values.

Everything here is already normalized: principals without spiffe://, methods and
hosts in one case, CIDRs parsed, ports as ints. Matching follows Istio: inside a
`from` source or a `to` operation every field that is set must hold; a rule needs
one of its sources and one of its operations (an absent list holds); strings match
exactly, by prefix (`abc*`), by suffix (`*abc`) or by presence (`*`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Action = Literal["ALLOW", "DENY"]
Layer = Literal["L4", "L7"]


def glob(pattern: str, value: str) -> bool:
    """Istio string match: `*` (present), `*suffix`, `prefix*` or exact."""
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


def any_glob(patterns: tuple[str, ...], value: str | None) -> bool:
    """A pattern matches a value that is there; nothing matches an absent value (the
    principal or namespace of a plaintext caller)."""
    return value is not None and any(glob(p, value) for p in patterns)


def holds(patterns: tuple[str, ...], not_patterns: tuple[str, ...], value: str | None) -> bool:
    """A field and its not-form: one of `patterns` matches (when set) and none of
    `not_patterns` does."""
    if patterns and not any_glob(patterns, value):
        return False
    return not (not_patterns and any_glob(not_patterns, value))


def host_matches(patterns: tuple[str, ...], host: str) -> bool:
    """Hosts compare case-insensitively, with or without the port of the Host header."""
    host = host.lower()
    bare = host.rsplit(":", 1)[0] if ":" in host and not host.endswith("]") else host
    return any(glob(p, host) or glob(p, bare) for p in patterns)


@dataclass(frozen=True, slots=True)
class Facts:
    """One connection or request as the rules read it (built by the engine)."""

    principal: str | None  # without spiffe://; None: plaintext caller
    namespace: str | None
    source_ip: Address | None  # None: not known to this proxy
    port: int | None
    method: str  # upper case
    path: str
    host: str


@dataclass(frozen=True, slots=True)
class Source:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[Network, ...] = ()
    not_ip_blocks: tuple[Network, ...] = ()

    def matches(self, f: Facts, action: Action) -> bool:
        if not (holds(self.principals, self.not_principals, f.principal)
                and holds(self.namespaces, self.not_namespaces, f.namespace)):
            return False
        if self.ip_blocks or self.not_ip_blocks:
            ip = f.source_ip
            if ip is None:  # cannot tell: an ALLOW does not match, a DENY does
                return action == "DENY"
            if self.ip_blocks and not any(ip in n for n in self.ip_blocks):
                return False
            if self.not_ip_blocks and any(ip in n for n in self.not_ip_blocks):
                return False
        return True


@dataclass(frozen=True, slots=True)
class Operation:
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()  # L7 fields from here on
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()

    @property
    def has_l7(self) -> bool:
        return bool(self.methods or self.not_methods or self.paths or self.not_paths
                    or self.hosts or self.not_hosts)

    def matches(self, f: Facts, layer: Layer) -> bool:
        """At L4 the L7 fields are not looked at (see Rule.matches for ALLOW)."""
        if self.ports and f.port not in self.ports:
            return False
        if self.not_ports and f.port in self.not_ports:
            return False
        if layer == "L4":
            return True
        if not (holds(self.methods, self.not_methods, f.method)
                and holds(self.paths, self.not_paths, f.path)):
            return False
        if self.hosts and not host_matches(self.hosts, f.host):
            return False
        return not (self.not_hosts and host_matches(self.not_hosts, f.host))


@dataclass(frozen=True, slots=True)
class Rule:
    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()

    @property
    def has_l7(self) -> bool:
        return any(o.has_l7 for o in self.operations)

    def matches(self, f: Facts, action: Action, layer: Layer) -> bool:
        """Istio ambient at L4: an ALLOW rule that needs L7 fields never matches
        (more restrictive); a DENY rule is applied without its L7 fields (also more
        restrictive)."""
        if layer == "L4" and action == "ALLOW" and self.has_l7:
            return False
        if self.sources and not any(s.matches(f, action) for s in self.sources):
            return False
        return not self.operations or any(o.matches(f, layer) for o in self.operations)


@dataclass(frozen=True, slots=True)
class Target:
    kind: str  # "Service" | "Gateway"
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Policy:
    """One compiled AuthorizationPolicy. `error` is set when the pushed policy could
    not be compiled: the policy is then a DENY of everything it selects."""

    namespace: str
    name: str
    action: Action
    rules: tuple[Rule, ...] = ()
    targets: tuple[Target, ...] = ()
    error: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def matches(self, f: Facts, layer: Layer) -> bool:
        return any(r.matches(f, self.action, layer) for r in self.rules)

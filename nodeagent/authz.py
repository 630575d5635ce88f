"""L4 authorization as Istio defines it, evaluated at the destination's node proxy.

Sans-I/O: a `Connection` in, a `Verdict` out. Semantics (Istio's):
  - any DENY policy with a matching rule denies (deny wins);
  - else, if ALLOW policies apply, one of their rules must match;
  - else the connection is allowed (no policy selects the workload).
A rule matches when any of its sources matches (or it has none) and any of its
operations matches (or it has none); inside a source or operation every field set
must match. L7 fields (methods, paths, hosts) cannot be checked at L4: an ALLOW rule
that needs them never matches here and a DENY rule that has them always does, so a
policy meant for a waypoint fails closed at the node proxy, as ztunnel does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mesh.api import config_pb2 as pb


@dataclass(frozen=True)
class Connection:
    source_principal: str | None  # SPIFFE id of a verified peer; None for plaintext
    source_ip: str
    destination_port: int

    @property
    def source_namespace(self) -> str | None:
        if not self.source_principal:
            return None
        parts = self.source_principal.split("/")
        return parts[parts.index("ns") + 1] if "ns" in parts[:-1] else None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    policy: str | None  # "namespace/name" of the deciding policy, None for the default
    reason: str


def _principal_forms(principal: str) -> tuple[str, str]:
    bare = principal.removeprefix("spiffe://")
    return bare, f"spiffe://{bare}"


def _match_string(patterns: Iterable[str], value: str | None) -> bool:
    """Istio string match: exact, `prefix*`, `*suffix` or `*`."""
    if value is None:
        return False
    for pattern in patterns:
        if pattern == "*" or pattern == value:
            return True
        if pattern.endswith("*") and value.startswith(pattern[:-1]):
            return True
        if pattern.startswith("*") and value.endswith(pattern[1:]):
            return True
    return False


def _match_principal(patterns: Sequence[str], principal: str | None) -> bool:
    if principal is None:
        return False
    bare, full = _principal_forms(principal)
    return _match_string(patterns, bare) or _match_string(patterns, full)


def _match_ip(blocks: Sequence[str], ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    for block in blocks:
        try:
            if addr in ipaddress.ip_network(block, strict=False):
                return True
        except ValueError:
            continue
    return False


def source_matches(src: pb.Source, conn: Connection) -> bool:
    checks = (
        (src.principals, lambda: _match_principal(src.principals, conn.source_principal)),
        (src.not_principals, lambda: not _match_principal(src.not_principals,
                                                          conn.source_principal)),
        (src.namespaces, lambda: _match_string(src.namespaces, conn.source_namespace)),
        (src.not_namespaces, lambda: not _match_string(src.not_namespaces,
                                                       conn.source_namespace)),
        (src.ip_blocks, lambda: _match_ip(src.ip_blocks, conn.source_ip)),
        (src.not_ip_blocks, lambda: not _match_ip(src.not_ip_blocks, conn.source_ip)),
    )
    return all(check() for present, check in checks if present)


def _has_l7(op: pb.Operation) -> bool:
    return bool(op.methods or op.not_methods or op.paths or op.not_paths or op.hosts
                or op.not_hosts)


def operation_matches(op: pb.Operation, conn: Connection, action: int) -> bool:
    if _has_l7(op):
        return action == pb.DENY
    if op.ports and conn.destination_port not in op.ports:
        return False
    return not (op.not_ports and conn.destination_port in op.not_ports)


def rule_matches(rule: pb.Rule, conn: Connection, action: int) -> bool:
    sources_ok = not rule.sources or any(source_matches(s, conn) for s in rule.sources)
    ops_ok = not rule.operations or any(
        operation_matches(o, conn, action) for o in rule.operations)
    return sources_ok and ops_ok


def evaluate(policies: Sequence[pb.Authorization], conn: Connection) -> Verdict:
    """Decide one connection against the policies selecting its destination."""
    allows = []
    for policy in policies:
        name = f"{policy.namespace}/{policy.name}"
        if policy.action == pb.DENY:
            if any(rule_matches(r, conn, pb.DENY) for r in policy.rules):
                return Verdict(False, name, f"denied by DENY policy {name}")
        else:
            allows.append(policy)
    if not allows:
        return Verdict(True, None, "no policy selects the workload")
    for policy in allows:
        name = f"{policy.namespace}/{policy.name}"
        if any(rule_matches(r, conn, pb.ALLOW) for r in policy.rules):
            return Verdict(True, name, f"allowed by ALLOW policy {name}")
    names = ", ".join(f"{p.namespace}/{p.name}" for p in allows)
    return Verdict(False, names, f"no rule of ALLOW policies {names} matches")

"""Pushed Authorization (mesh/api config.proto) -> compiled Policy, once per snapshot.

A policy that cannot be compiled is never applied partly or widened (a skipped bad
CIDR in a DENY would let its sources through; an empty `from` would match everyone):
the whole policy becomes a DENY of everything it selects, logged (here) and shown in
the proxies' metrics (mesh.authz.metrics), until a good version arrives. ztunnel
rejects such a resource instead, which leaves a new ALLOW policy absent and so allows
more; a deny-all cannot. Refused:
  - an action other than ALLOW / DENY (AUDIT, CUSTOM, unset, unknown);
  - fields this proxy does not know (a newer controller's `when`, say);
  - an empty source or operation (all fields unset), an empty string;
  - a CIDR that does not parse, a port outside 1-65535;
  - a wildcard other than `*`, `*suffix` or `prefix*`;
  - a target that is not a named Service or Gateway."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import structlog
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from mesh.api import config_pb2 as pb
from mesh.authz.model import Network, Operation, Policy, Rule, Source, Target
from mesh.authz.principal import bare_principal

log = structlog.get_logger("mesh.authz")

_ACTIONS = {pb.ALLOW: "ALLOW", pb.DENY: "DENY"}
TARGET_KINDS = ("Service", "Gateway")
DENY_ALL = (Rule(),)


class PolicyCompileError(ValueError):
    """Where in the policy (spec field path) and why it cannot be enforced."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where, self.why = where, why


def _no_unknown_fields(msg: Message, where: str) -> None:
    unknown = UnknownFieldSet(msg)
    if len(unknown):
        numbers = sorted({unknown[i].field_number for i in range(len(unknown))})
        raise PolicyCompileError(where or "spec", f"unknown field number(s) {numbers}: "
                                 "this proxy cannot enforce them (older than the controller?)")


def _patterns(values: Iterable[str], where: str) -> tuple[str, ...]:
    out = []
    for i, v in enumerate(values):
        if not v:
            raise PolicyCompileError(f"{where}[{i}]", "empty string")
        inner = v[1:] if v.startswith("*") else v[:-1] if v.endswith("*") else v
        if v != "*" and "*" in inner:
            raise PolicyCompileError(f"{where}[{i}]", f"unsupported wildcard {v!r}: use "
                                     "'*', '*suffix' or 'prefix*'")
        out.append(v)
    return tuple(out)


def _networks(values: Iterable[str], where: str) -> tuple[Network, ...]:
    out = []
    for i, v in enumerate(values):
        try:
            out.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise PolicyCompileError(f"{where}[{i}]", f"not an IP address or CIDR: {v!r}"
                                     ) from None
    return tuple(out)


def _ports(values: Iterable[int], where: str) -> tuple[int, ...]:
    for i, p in enumerate(values):
        if not 1 <= p <= 65535:
            raise PolicyCompileError(f"{where}[{i}]", f"not a port 1-65535: {p}")
    return tuple(values)


def _source(s: pb.Source, where: str) -> Source:
    _no_unknown_fields(s, where)
    src = Source(
        tuple(bare_principal(p) for p in _patterns(s.principals, f"{where}.principals")),
        tuple(bare_principal(p) for p in _patterns(s.not_principals,
                                                   f"{where}.notPrincipals")),
        _patterns(s.namespaces, f"{where}.namespaces"),
        _patterns(s.not_namespaces, f"{where}.notNamespaces"),
        _networks(s.ip_blocks, f"{where}.ipBlocks"),
        _networks(s.not_ip_blocks, f"{where}.notIpBlocks"))
    if src == Source():
        raise PolicyCompileError(where, "empty source: it would match every caller")
    return src


def _operation(o: pb.Operation, where: str) -> Operation:
    _no_unknown_fields(o, where)
    op = Operation(
        _ports(o.ports, f"{where}.ports"), _ports(o.not_ports, f"{where}.notPorts"),
        tuple(m.upper() for m in _patterns(o.methods, f"{where}.methods")),
        tuple(m.upper() for m in _patterns(o.not_methods, f"{where}.notMethods")),
        _patterns(o.paths, f"{where}.paths"), _patterns(o.not_paths, f"{where}.notPaths"),
        tuple(h.lower() for h in _patterns(o.hosts, f"{where}.hosts")),
        tuple(h.lower() for h in _patterns(o.not_hosts, f"{where}.notHosts")))
    if op == Operation():
        raise PolicyCompileError(where, "empty operation: it would match every request")
    return op


def _targets(a: pb.Authorization) -> tuple[Target, ...]:
    out = []
    for i, t in enumerate(a.targets):
        where = f"spec.targetRefs[{i}]"
        _no_unknown_fields(t, where)
        if t.kind not in TARGET_KINDS or not t.name:
            raise PolicyCompileError(where, f"not a named Service or Gateway ({t.kind!r} "
                                     f"{t.name!r})")
        out.append(Target(t.kind, t.namespace or a.namespace, t.name))
    return tuple(out)


def _compile(a: pb.Authorization) -> Policy:
    _no_unknown_fields(a, "spec")
    action = _ACTIONS.get(a.action)
    if action is None:
        raise PolicyCompileError("spec.action", f"{a.action} is neither ALLOW nor DENY")
    rules = []
    for i, r in enumerate(a.rules):
        _no_unknown_fields(r, f"spec.rules[{i}]")
        rules.append(Rule(
            tuple(_source(s, f"spec.rules[{i}].from[{j}].source")
                  for j, s in enumerate(r.sources)),
            tuple(_operation(o, f"spec.rules[{i}].to[{j}].operation")
                  for j, o in enumerate(r.operations))))
    return Policy(a.namespace, a.name, action, tuple(rules),  # type: ignore[arg-type]
                  _targets(a))


def compile_policy(a: pb.Authorization) -> Policy:
    """Never raises: a policy that cannot be compiled becomes a deny-all with the
    same name and scope (all the waypoint's services when its targets are bad)."""
    try:
        return _compile(a)
    except PolicyCompileError as e:
        key = f"{a.namespace}/{a.name}"
        log.warning("authz.policy_uncompilable", policy=key, field=e.where, reason=e.why,
                    enforced="deny all it selects")
        try:
            targets = _targets(a)
        except PolicyCompileError:
            targets = ()
        return Policy(a.namespace, a.name, "DENY", DENY_ALL, targets, error=str(e))


def compile_policies(items: Iterable[pb.Authorization]) -> tuple[Policy, ...]:
    return tuple(compile_policy(a) for a in items)

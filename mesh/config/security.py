"""Security CRDs (ambientmesh.io/v1alpha1), shaped as Istio's so policies carry over:
PeerAuthentication and AuthorizationPolicy. Unknown fields are refused.

A policy that would grant more than its author wrote is refused whole (DESIGN §7b):
an empty `source`, `operation` or condition matches anything, and it is exactly what
an API server leaves of a typo'd field once it has pruned it. As Istio's validation:
`from`/`to` present but empty, an empty source/operation, a condition without values,
an empty string in a list, and a DENY policy without rules are refused; `rules: [{}]`
(Istio's deliberate "match everything") and an ALLOW policy without rules (allows
nothing) are accepted."""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from mesh.config.base import Resource, StrictModel, WorkloadSelector

API_VERSION = "ambientmesh.io/v1alpha1"


class MutualTLS(StrictModel):
    mode: Literal["STRICT", "PERMISSIVE", "UNSET"] = "UNSET"

    @field_validator("mode", mode="before")
    @classmethod
    def _no_disable(cls, v: Any) -> Any:
        if v == "DISABLE":
            raise ValueError(
                "DISABLE is not supported in ambient mode: use PERMISSIVE to accept "
                "plaintext"
            )
        return v


class PeerAuthenticationSpec(StrictModel):
    selector: WorkloadSelector | None = None
    mtls: MutualTLS = Field(default_factory=MutualTLS)


class PeerAuthentication(Resource):
    KIND: ClassVar[str] = "PeerAuthentication"
    API_VERSIONS: ClassVar[tuple[str, ...]] = (API_VERSION,)
    spec: PeerAuthenticationSpec = Field(default_factory=PeerAuthenticationSpec)

    @model_validator(mode="before")
    @classmethod
    def _mode_written(cls, data: Any) -> Any:
        # Stricter than Istio (which lets mtls default to "inherit"): a typo'd mode,
        # pruned, would leave a workload on its namespace's weaker mode unnoticed.
        spec = data.get("spec") if isinstance(data, dict) else None
        mtls = spec.get("mtls") if isinstance(spec, dict) else None
        if isinstance(data, dict) and not (isinstance(mtls, dict) and "mode" in mtls):
            raise ValueError(
                "spec.mtls.mode: must be set (STRICT, PERMISSIVE, or UNSET to inherit): a "
                "PeerAuthentication without a mode changes nothing, and it is what an API "
                "server leaves of a typo'd mode once it has pruned it")
        return data


class PolicyTargetReference(StrictModel):
    group: str = ""
    kind: Literal["Service", "Gateway"]
    name: str = Field(min_length=1)
    namespace: str | None = None


def _check_cidrs(values: list[str]) -> list[str]:
    for i, v in enumerate(values):
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"[{i}]: must be an IP address or CIDR (got {v!r})") from None
    return values


def _no_empty_strings(values: list[str]) -> list[str]:
    """Istio's CheckEmptyValues: "" in a match list is a mistake, never a wildcard."""
    for i, v in enumerate(values):
        if v == "":
            raise ValueError(f"[{i}]: must not be empty")
    return values


def _require_some(model: StrictModel, what: str, matches: str) -> None:
    if not any(getattr(model, name) for name in type(model).model_fields):
        raise ValueError(f"must set at least one field (an empty {what} would match "
                         f"{matches})")


class Source(StrictModel):
    principals: list[str] = Field(default_factory=list)
    not_principals: list[str] = Field(default_factory=list)
    namespaces: list[str] = Field(default_factory=list)
    not_namespaces: list[str] = Field(default_factory=list)
    ip_blocks: list[str] = Field(default_factory=list)
    not_ip_blocks: list[str] = Field(default_factory=list)

    @field_validator("*")
    @classmethod
    def _values(cls, v: list[str]) -> list[str]:
        return _no_empty_strings(v)

    @field_validator("ip_blocks", "not_ip_blocks")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return _check_cidrs(v)

    @model_validator(mode="after")
    def _not_empty(self) -> Source:
        _require_some(self, "source", "any peer")
        return self


class RuleFrom(StrictModel):
    source: Source


def _port(v: Any, i: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ValueError(f"[{i}]: must be a port number (got {v!r})")
    text = str(v)
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"[{i}]: must be a port number 1-65535 (got {v!r})")
    return int(text)


class Operation(StrictModel):
    ports: list[int] = Field(default_factory=list)
    not_ports: list[int] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=list)
    not_methods: list[str] = Field(default_factory=list)
    paths: list[str] = Field(default_factory=list)
    not_paths: list[str] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    not_hosts: list[str] = Field(default_factory=list)

    @field_validator("ports", "not_ports", mode="before")
    @classmethod
    def _ports(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        return [_port(p, i) for i, p in enumerate(v)]

    @field_validator("methods", "not_methods", "paths", "not_paths", "hosts", "not_hosts")
    @classmethod
    def _values(cls, v: list[str]) -> list[str]:
        return _no_empty_strings(v)

    @model_validator(mode="after")
    def _not_empty(self) -> Operation:
        _require_some(self, "operation", "any request")
        return self

    @property
    def has_l7(self) -> bool:
        return bool(
            self.methods or self.not_methods or self.paths or self.not_paths
            or self.hosts or self.not_hosts
        )


class RuleTo(StrictModel):
    operation: Operation


class Condition(StrictModel):
    """Istio's `when` entry. Its shape is checked so the message says what is wrong;
    conditions themselves are not enforced yet, so a rule with any is refused."""

    key: str = Field(min_length=1)
    values: list[str] = Field(default_factory=list)
    not_values: list[str] = Field(default_factory=list)

    @field_validator("values", "not_values")
    @classmethod
    def _values(cls, v: list[str]) -> list[str]:
        return _no_empty_strings(v)

    @model_validator(mode="after")
    def _some_values(self) -> Condition:
        if not self.values and not self.not_values:
            raise ValueError("must set values or notValues (a condition without values "
                             "would match any request)")
        return self


def _present_but_empty(data: Any, *names: str) -> str | None:
    if isinstance(data, dict):
        for name in names:
            if name in data and data[name] == []:
                return name
    return None


class Rule(StrictModel):
    from_: list[RuleFrom] = Field(default_factory=list, alias="from")
    to: list[RuleTo] = Field(default_factory=list)
    when: list[Condition] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _lists_not_emptied(cls, data: Any) -> Any:
        # Absent matches anything by design; present but empty is a mistake (Istio).
        if _present_but_empty(data, "from", "from_"):
            raise ValueError("from: must not be empty (omit from to match any peer)")
        if _present_but_empty(data, "to"):
            raise ValueError("to: must not be empty (omit to to match any request)")
        return data

    @model_validator(mode="after")
    def _no_conditions(self) -> Rule:
        if self.when:
            raise ValueError("when: conditions are not supported yet: the rule cannot be "
                             "enforced as written, so the policy is refused")
        return self


class AuthorizationPolicySpec(StrictModel):
    selector: WorkloadSelector | None = None
    target_refs: list[PolicyTargetReference] = Field(default_factory=list)
    action: Literal["ALLOW", "DENY"] = "ALLOW"
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, v: Any) -> Any:
        if v in ("AUDIT", "CUSTOM"):
            raise ValueError(f"{v} is not supported (use ALLOW or DENY)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _target_refs_not_emptied(cls, data: Any) -> Any:
        if _present_but_empty(data, "targetRefs", "target_refs"):
            raise ValueError("targetRefs: must not be empty (omit targetRefs to apply the "
                             "policy to workloads)")
        return data

    @model_validator(mode="after")
    def _one_scope(self) -> AuthorizationPolicySpec:
        if self.selector is not None and self.target_refs:
            raise ValueError("targetRefs: cannot be combined with selector; use one of them")
        if self.action == "DENY" and not self.rules:
            raise ValueError("rules: a DENY policy needs at least one rule (it would never "
                             "deny; use rules: [{}] to deny everything)")
        return self


class AuthorizationPolicy(Resource):
    KIND: ClassVar[str] = "AuthorizationPolicy"
    API_VERSIONS: ClassVar[tuple[str, ...]] = (API_VERSION,)
    spec: AuthorizationPolicySpec = Field(default_factory=AuthorizationPolicySpec)

    @model_validator(mode="after")
    def _own_namespace(self) -> AuthorizationPolicy:
        # As Istio: a policy written in one namespace must not change who reaches
        # another namespace's services (a tenant could open or close them).
        own = self.metadata.namespace or "default"
        for i, ref in enumerate(self.spec.target_refs):
            if ref.namespace and ref.namespace != own:
                raise ValueError(
                    f"spec.targetRefs[{i}].namespace: must be the policy's own namespace "
                    f"({own}) or unset: a policy must not change access to another "
                    f"namespace's services (got {ref.namespace!r})")
        return self

"""Security CRDs (ambientmesh.io/v1alpha1), shaped as Istio's so policies carry over:
PeerAuthentication and AuthorizationPolicy. Unknown fields are refused."""

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


class Source(StrictModel):
    principals: list[str] = Field(default_factory=list)
    not_principals: list[str] = Field(default_factory=list)
    namespaces: list[str] = Field(default_factory=list)
    not_namespaces: list[str] = Field(default_factory=list)
    ip_blocks: list[str] = Field(default_factory=list)
    not_ip_blocks: list[str] = Field(default_factory=list)

    @field_validator("ip_blocks", "not_ip_blocks")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return _check_cidrs(v)


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

    @property
    def has_l7(self) -> bool:
        return bool(
            self.methods or self.not_methods or self.paths or self.not_paths
            or self.hosts or self.not_hosts
        )


class RuleTo(StrictModel):
    operation: Operation


class Rule(StrictModel):
    from_: list[RuleFrom] = Field(default_factory=list, alias="from")
    to: list[RuleTo] = Field(default_factory=list)


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

    @model_validator(mode="after")
    def _one_scope(self) -> AuthorizationPolicySpec:
        if self.selector is not None and self.target_refs:
            raise ValueError("targetRefs: cannot be combined with selector; use one of them")
        return self


class AuthorizationPolicy(Resource):
    KIND: ClassVar[str] = "AuthorizationPolicy"
    API_VERSIONS: ClassVar[tuple[str, ...]] = (API_VERSION,)
    spec: AuthorizationPolicySpec = Field(default_factory=AuthorizationPolicySpec)

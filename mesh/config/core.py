"""Kubernetes core kinds as used in local mode: Namespace, Pod, Deployment, Service,
EndpointSlice. Fields we do not use are kept (OpenModel)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from mesh.config.annotations import EXCLUDE_PORTS, SERVICE_NAME_LABEL, parse_port_list
from mesh.config.base import (
    LabelSelector,
    OpenModel,
    Resource,
    check_dns_label,
)

_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
Protocol = Literal["TCP", "UDP", "SCTP"]


class NamespaceSpec(OpenModel):
    pass


class Namespace(Resource):
    KIND: ClassVar[str] = "Namespace"
    API_VERSIONS: ClassVar[tuple[str, ...]] = ("v1",)
    NAMESPACED: ClassVar[bool] = False
    spec: NamespaceSpec = Field(default_factory=NamespaceSpec)


class EnvVar(OpenModel):
    name: str = Field(min_length=1)
    value: str = ""


class ContainerPort(OpenModel):
    container_port: int = Field(ge=1, le=65535)
    name: str | None = None
    protocol: Protocol = "TCP"


class Container(OpenModel):
    name: str
    image: str | None = None
    command: list[str] = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    ports: list[ContainerPort] = Field(default_factory=list)
    working_dir: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_dns_label(v)


class PodSpec(OpenModel):
    containers: list[Container] = Field(min_length=1)
    service_account_name: str = "default"
    node_name: str | None = None

    @field_validator("service_account_name")
    @classmethod
    def _sa(cls, v: str) -> str:
        return check_dns_label(v)

    @model_validator(mode="after")
    def _unique_containers(self) -> PodSpec:
        seen: set[str] = set()
        for c in self.containers:
            if c.name in seen:
                raise ValueError(f"containers: duplicate container name {c.name!r}")
            seen.add(c.name)
        return self

    def named_port(self, name: str) -> int | None:
        for c in self.containers:
            for p in c.ports:
                if p.name == name:
                    return p.container_port
        return None


class PodStatus(OpenModel):
    phase: str = "Pending"
    pod_ip: str | None = Field(default=None, alias="podIP")
    pod_ips: list[dict[str, str]] = Field(default_factory=list, alias="podIPs")
    host_ip: str | None = Field(default=None, alias="hostIP")


class Pod(Resource):
    KIND: ClassVar[str] = "Pod"
    API_VERSIONS: ClassVar[tuple[str, ...]] = ("v1",)
    spec: PodSpec
    status: PodStatus | None = None

    @model_validator(mode="after")
    def _exclude_ports(self) -> Pod:
        raw = self.metadata.annotations.get(EXCLUDE_PORTS)
        if raw is not None:
            try:
                parse_port_list(raw)
            except ValueError as e:
                raise ValueError(f"metadata.annotations[{EXCLUDE_PORTS}]: {e}") from None
        return self


class PodTemplateMeta(OpenModel):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PodTemplate(OpenModel):
    metadata: PodTemplateMeta = Field(default_factory=PodTemplateMeta)
    spec: PodSpec


class DeploymentSpec(OpenModel):
    replicas: int = Field(default=1, ge=0, le=1000)
    selector: LabelSelector
    template: PodTemplate

    @model_validator(mode="after")
    def _selector_matches_template(self) -> DeploymentSpec:
        if self.selector.is_empty():
            raise ValueError("selector: must not be empty")
        if not self.selector.matches(self.template.metadata.labels):
            raise ValueError("selector: does not match template.metadata.labels")
        return self


class Deployment(Resource):
    KIND: ClassVar[str] = "Deployment"
    API_VERSIONS: ClassVar[tuple[str, ...]] = ("apps/v1",)
    spec: DeploymentSpec


class ServicePort(OpenModel):
    name: str | None = None
    port: int = Field(ge=1, le=65535)
    target_port: Any = None
    protocol: Protocol = "TCP"
    app_protocol: str | None = None

    @field_validator("target_port")
    @classmethod
    def _target_port(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, bool):
            raise ValueError(f"must be a port number or a port name (got {v!r})")
        if isinstance(v, int):
            if not 1 <= v <= 65535:
                raise ValueError(f"must be between 1 and 65535 (got {v})")
            return v
        if isinstance(v, str):
            if v.isdigit():
                return cls._target_port(int(v))
            if len(v) > 15 or not _IANA_SVC_NAME.match(v):
                raise ValueError(f"must be a port number or an IANA port name (got {v!r})")
            return v
        raise ValueError(f"must be a port number or a port name (got {v!r})")

    @property
    def effective_target(self) -> int | str:
        return self.target_port if self.target_port is not None else self.port


class ServiceSpec(OpenModel):
    selector: dict[str, str] | None = None
    ports: list[ServicePort] = Field(min_length=1)
    cluster_ip: str | None = Field(default=None, alias="clusterIP")
    type: str = "ClusterIP"

    @field_validator("cluster_ip")
    @classmethod
    def _cluster_ip(cls, v: str | None) -> str | None:
        if v is None or v in ("", "None"):
            return v or None
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"must be an IP address or \"None\" (got {v!r})") from None
        return v

    @model_validator(mode="after")
    def _port_names(self) -> ServiceSpec:
        names: set[str] = set()
        ports: set[tuple[int, str]] = set()
        for i, p in enumerate(self.ports):
            if len(self.ports) > 1 and not p.name:
                raise ValueError(f"ports[{i}].name: required when a Service has several ports")
            if p.name:
                if p.name in names:
                    raise ValueError(f"ports[{i}].name: duplicate port name {p.name!r}")
                names.add(p.name)
            if (p.port, p.protocol) in ports:
                raise ValueError(f"ports[{i}].port: duplicate port {p.port}/{p.protocol}")
            ports.add((p.port, p.protocol))
        return self

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"


class Service(Resource):
    KIND: ClassVar[str] = "Service"
    API_VERSIONS: ClassVar[tuple[str, ...]] = ("v1",)
    spec: ServiceSpec

    @field_validator("metadata")
    @classmethod
    def _dns_name(cls, v: Any) -> Any:
        check_dns_label(v.name)
        return v


class EndpointConditions(OpenModel):
    ready: bool = True


class ObjectReference(OpenModel):
    kind: str = "Pod"
    namespace: str | None = None
    name: str


class SliceEndpoint(OpenModel):
    addresses: list[str] = Field(min_length=1)
    conditions: EndpointConditions = Field(default_factory=EndpointConditions)
    node_name: str | None = None
    target_ref: ObjectReference | None = None


class EndpointPort(OpenModel):
    name: str | None = None
    port: int = Field(ge=1, le=65535)
    protocol: Protocol = "TCP"
    app_protocol: str | None = None


class EndpointSlice(Resource):
    """Endpoints for a Service without a selector (e.g. something outside the mesh)."""

    KIND: ClassVar[str] = "EndpointSlice"
    API_VERSIONS: ClassVar[tuple[str, ...]] = ("discovery.k8s.io/v1",)
    address_type: Literal["IPv4", "IPv6"]
    endpoints: list[SliceEndpoint] = Field(default_factory=list)
    ports: list[EndpointPort] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> EndpointSlice:
        if SERVICE_NAME_LABEL not in self.metadata.labels:
            raise ValueError(f"metadata.labels: {SERVICE_NAME_LABEL} is required")
        want = 4 if self.address_type == "IPv4" else 6
        for i, ep in enumerate(self.endpoints):
            for j, addr in enumerate(ep.addresses):
                try:
                    ok = ipaddress.ip_address(addr).version == want
                except ValueError:
                    ok = False
                if not ok:
                    raise ValueError(
                        f"endpoints[{i}].addresses[{j}]: must be an {self.address_type} "
                        f"address (got {addr!r})"
                    )
        return self

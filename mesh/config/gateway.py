"""Gateway API kinds: Gateway (class ambient-waypoint makes a waypoint) and HTTPRoute
attached to Services (GAMMA / "mesh" style)."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from mesh.config.base import OpenModel, Resource, check_duration, duration_ms

_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
_PRECISE_HOSTNAME = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Listener(OpenModel):
    name: str
    port: int = Field(ge=1, le=65535)
    protocol: str
    hostname: str | None = None


class GatewaySpec(OpenModel):
    gateway_class_name: str = Field(min_length=1)
    listeners: list[Listener] = Field(default_factory=list)


class Gateway(Resource):
    KIND: ClassVar[str] = "Gateway"
    API_VERSIONS: ClassVar[tuple[str, ...]] = (
        "gateway.networking.k8s.io/v1",
        "gateway.networking.k8s.io/v1beta1",
    )
    spec: GatewaySpec


class ParentReference(OpenModel):
    group: str | None = None
    kind: str = "Gateway"
    namespace: str | None = None
    name: str = Field(min_length=1)
    section_name: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)

    @property
    def is_service(self) -> bool:
        return self.kind == "Service" and self.group in (None, "", "core")


class PathMatch(OpenModel):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = "/"

    @model_validator(mode="after")
    def _value(self) -> PathMatch:
        if self.type == "RegularExpression":
            try:
                re.compile(self.value)
            except re.error as e:
                raise ValueError(f"value: not a valid regular expression ({e})") from None
        elif not self.value.startswith("/"):
            raise ValueError(f"value: must start with '/' (got {self.value!r})")
        return self


class HeaderMatch(OpenModel):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: str = Field(min_length=1)
    value: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _HEADER_NAME.match(v):
            raise ValueError(f"must be a valid HTTP header name (got {v!r})")
        return v

    @model_validator(mode="after")
    def _regex(self) -> HeaderMatch:
        if self.type == "RegularExpression":
            try:
                re.compile(self.value)
            except re.error as e:
                raise ValueError(f"value: not a valid regular expression ({e})") from None
        return self


class QueryParamMatch(HeaderMatch):
    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return v


HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]


class HTTPRouteMatch(OpenModel):
    path: PathMatch | None = None
    headers: list[HeaderMatch] = Field(default_factory=list, max_length=16)
    query_params: list[QueryParamMatch] = Field(default_factory=list, max_length=16)
    method: HttpMethod | None = None


class HTTPHeader(OpenModel):
    name: str = Field(min_length=1)
    value: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _HEADER_NAME.match(v):
            raise ValueError(f"must be a valid HTTP header name (got {v!r})")
        return v


class HeaderModifier(OpenModel):
    set: list[HTTPHeader] = Field(default_factory=list, max_length=16)
    add: list[HTTPHeader] = Field(default_factory=list, max_length=16)
    remove: list[str] = Field(default_factory=list, max_length=16)


class BackendRef(OpenModel):
    group: str | None = None
    kind: str = "Service"
    name: str = Field(min_length=1)
    namespace: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    weight: int = Field(default=1, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _service(self) -> BackendRef:
        if self.kind != "Service" or self.group not in (None, "", "core"):
            raise ValueError(f"kind: only Service backends are supported (got {self.kind!r})")
        return self


class MirrorConfig(OpenModel):
    backend_ref: BackendRef
    percent: int | None = Field(default=None, ge=0, le=100)


class HTTPPathModifier(OpenModel):
    """Gateway API v1 HTTPPathModifier: exactly the field its type names."""

    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: str | None = Field(default=None, max_length=1024)
    replace_prefix_match: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _one_value(self) -> HTTPPathModifier:
        wanted, other = (("replaceFullPath", "replacePrefixMatch")
                         if self.type == "ReplaceFullPath"
                         else ("replacePrefixMatch", "replaceFullPath"))
        values = {"replaceFullPath": self.replace_full_path,
                  "replacePrefixMatch": self.replace_prefix_match}
        if values[wanted] is None:
            raise ValueError(f"{wanted}: required when type is {self.type}")
        if values[other] is not None:
            raise ValueError(f"{other}: not allowed when type is {self.type} (set {wanted})")
        value = values[wanted] or ""
        if not value.startswith("/"):
            raise ValueError(f"{wanted}: must start with '/' (got {value!r})")
        if any(c in value for c in "?# \t\r\n"):
            raise ValueError(
                f"{wanted}: must be a path without query, fragment or whitespace (got {value!r})")
        return self


class URLRewrite(OpenModel):
    """Gateway API v1 HTTPURLRewriteFilter: a new Host and/or path sent upstream."""

    hostname: str | None = None
    path: HTTPPathModifier | None = None

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 253 or not _PRECISE_HOSTNAME.match(v)):
            raise ValueError(
                f"must be a precise DNS hostname (lower case letters, digits, '-' and '.', no "
                f"wildcard, no port) (got {v!r})")
        return v

    @model_validator(mode="after")
    def _something(self) -> URLRewrite:
        if self.hostname is None and self.path is None:
            raise ValueError("must set hostname, path or both")
        return self


FILTER_TYPES = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "URLRewrite")


class HTTPRouteFilter(OpenModel):
    type: str
    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_mirror: MirrorConfig | None = None
    url_rewrite: URLRewrite | None = None

    @model_validator(mode="after")
    def _config_present(self) -> HTTPRouteFilter:
        if self.type not in FILTER_TYPES:
            raise ValueError(
                f"type: filter {self.type!r} is not supported (supported: "
                f"{', '.join(FILTER_TYPES)})"
            )
        field = {
            "RequestHeaderModifier": ("requestHeaderModifier", self.request_header_modifier),
            "ResponseHeaderModifier": ("responseHeaderModifier", self.response_header_modifier),
            "RequestMirror": ("requestMirror", self.request_mirror),
            "URLRewrite": ("urlRewrite", self.url_rewrite),
        }[self.type]
        if field[1] is None:
            raise ValueError(f"{field[0]}: required when type is {self.type}")
        return self


class HTTPRouteTimeouts(OpenModel):
    request: str | None = None
    backend_request: str | None = None

    @field_validator("request", "backend_request")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        return check_duration(v) if v is not None else v

    @model_validator(mode="after")
    def _order(self) -> HTTPRouteTimeouts:
        if self.request and self.backend_request:
            req, backend = duration_ms(self.request), duration_ms(self.backend_request)
            if req and backend > req:
                raise ValueError(
                    f"backendRequest: must not exceed request ({self.backend_request} > "
                    f"{self.request})"
                )
        return self


class HTTPRouteRetry(OpenModel):
    codes: list[int] = Field(default_factory=list)
    attempts: int = Field(default=1, ge=0, le=100)
    backoff: str | None = None

    @field_validator("codes")
    @classmethod
    def _codes(cls, v: list[int]) -> list[int]:
        for i, code in enumerate(v):
            if not 400 <= code <= 599:
                raise ValueError(f"[{i}]: must be an HTTP status 400-599 (got {code})")
        return v

    @field_validator("backoff")
    @classmethod
    def _backoff(cls, v: str | None) -> str | None:
        return check_duration(v) if v is not None else v


class HTTPRouteRule(OpenModel):
    name: str | None = None
    matches: list[HTTPRouteMatch] = Field(default_factory=list, max_length=64)
    filters: list[HTTPRouteFilter] = Field(default_factory=list, max_length=16)
    backend_refs: list[BackendRef] = Field(default_factory=list, max_length=16)
    timeouts: HTTPRouteTimeouts | None = None
    retry: HTTPRouteRetry | None = None

    @model_validator(mode="after")
    def _rewrite(self) -> HTTPRouteRule:
        """Gateway API's rules for URLRewrite: at most one per rule, and a prefix
        replacement needs exactly one PathPrefix match (no match means PathPrefix /),
        because the prefix replaced is the one matched."""
        rewrites = [i for i, f in enumerate(self.filters) if f.type == "URLRewrite"]
        if len(rewrites) > 1:
            raise ValueError(f"filters[{rewrites[1]}]: at most one URLRewrite filter per rule")
        if not rewrites:
            return self
        i = rewrites[0]
        rewrite = self.filters[i].url_rewrite
        if rewrite is None or rewrite.path is None or rewrite.path.type != "ReplacePrefixMatch":
            return self
        if not self.matches:
            return self
        paths = [m.path for m in self.matches]
        if len(paths) != 1 or paths[0] is None or paths[0].type != "PathPrefix":
            raise ValueError(
                f"filters[{i}].urlRewrite.path: ReplacePrefixMatch needs exactly one match "
                f"with a PathPrefix path (the prefix it replaces); use ReplaceFullPath or "
                f"split the rule")
        return self


class HTTPRouteSpec(OpenModel):
    parent_refs: list[ParentReference] = Field(min_length=1, max_length=32)
    hostnames: list[str] = Field(default_factory=list, max_length=16)
    rules: list[HTTPRouteRule] = Field(default_factory=list, max_length=16)


class HTTPRoute(Resource):
    KIND: ClassVar[str] = "HTTPRoute"
    API_VERSIONS: ClassVar[tuple[str, ...]] = (
        "gateway.networking.k8s.io/v1",
        "gateway.networking.k8s.io/v1beta1",
    )
    spec: HTTPRouteSpec

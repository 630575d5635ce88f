"""HTTPRoute matching with Gateway API precedence (sans I/O).

A service's rules from every HTTPRoute attached to it are flattened into one ordered
list of (match, rule) pairs; the first pair that matches wins. The order follows the
Gateway API HTTPRoute spec: Exact path, then RegularExpression path (implementation
specific: longer pattern first), then PathPrefix by length, then having a method,
then most header matches, then most query matches; ties keep route order (oldest
first as given, then namespace/name) and rule order."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from waypoint.messages import RequestHead, header

PathKind = Literal["Exact", "PathPrefix", "RegularExpression"]


@dataclass(frozen=True)
class PathMatch:
    kind: PathKind = "PathPrefix"
    value: str = "/"

    def __post_init__(self) -> None:
        if self.kind == "RegularExpression":
            object.__setattr__(self, "_regex", re.compile(self.value))

    def matches(self, path: str) -> bool:
        if self.kind == "Exact":
            return path == self.value
        if self.kind == "RegularExpression":
            regex: re.Pattern[str] = self._regex  # type: ignore[attr-defined]
            return regex.fullmatch(path) is not None
        prefix = self.value.rstrip("/")
        if not prefix:
            return True
        # Element-wise prefix: /foo matches /foo and /foo/bar, never /foobar.
        return path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True)
class ValueMatch:
    """A header or query parameter match: exact value or a full-match regex."""

    name: str
    value: str
    regex: bool = False

    def __post_init__(self) -> None:
        if self.regex:
            object.__setattr__(self, "_regex", re.compile(self.value))

    def matches_value(self, actual: str | None) -> bool:
        if actual is None:
            return False
        if self.regex:
            pattern: re.Pattern[str] = self._regex  # type: ignore[attr-defined]
            return pattern.fullmatch(actual) is not None
        return actual == self.value


@dataclass(frozen=True)
class RouteMatch:
    """All conditions must hold (AND); header names are compared case-insensitively."""

    path: PathMatch = field(default_factory=PathMatch)
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()
    method: str | None = None

    def matches(self, req: RequestHead) -> bool:
        if self.method is not None and req.method != self.method:
            return False
        if not self.path.matches(req.path):
            return False
        for h in self.headers:
            if not h.matches_value(header(req.headers, h.name.lower())):
                return False
        if self.query:
            params = req.query
            for q in self.query:
                first = next((v for k, v in params if k == q.name), None)
                if not q.matches_value(first):
                    return False
        return True

    def precedence(self) -> tuple[int, int, int, int, int]:
        """Sort key: smaller sorts first (wins)."""
        kind_rank = {"Exact": 0, "RegularExpression": 1, "PathPrefix": 2}[self.path.kind]
        return (
            kind_rank,
            -len(self.path.value),
            0 if self.method else 1,
            -len(self.headers),
            -len(self.query),
        )


@dataclass(frozen=True)
class BackendTarget:
    """A weighted backendRef resolved to a service host name and port."""

    service: str  # "<name>.<namespace>"
    port: int | None
    weight: int = 1


@dataclass(frozen=True)
class HeaderModifier:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def apply(self, headers: list[tuple[str, str]]) -> None:
        names = {n.lower() for n, _ in self.set} | {n.lower() for n in self.remove}
        headers[:] = [(k, v) for k, v in headers if k not in names]
        headers.extend((n.lower(), v) for n, v in self.set)
        headers.extend((n.lower(), v) for n, v in self.add)


@dataclass(frozen=True)
class UrlRewrite:
    """Gateway API URLRewrite: replace the host, the full path, or the matched prefix."""

    hostname: str | None = None
    full_path: str | None = None
    prefix: str | None = None

    def apply(self, req: RequestHead, matched: PathMatch) -> None:
        if self.hostname:
            req.authority = self.hostname
        path, sep, query = req.target.partition("?")
        if self.full_path is not None:
            path = self.full_path
        elif self.prefix is not None and matched.kind == "PathPrefix":
            old = matched.value.rstrip("/")
            rest = path[len(old):]
            new = self.prefix.rstrip("/")
            path = (new + rest) if rest else (new or "/")
            if not path.startswith("/"):
                path = "/" + path
        req.target = path + (sep + query if sep else "")


@dataclass(frozen=True)
class Mirror:
    target: BackendTarget
    percent: float = 100.0


@dataclass(frozen=True)
class Filters:
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    rewrite: UrlRewrite | None = None
    mirrors: tuple[Mirror, ...] = ()


@dataclass(frozen=True)
class Timeouts:
    request_ms: int = 0  # 0: none
    backend_ms: int = 0  # per try; 0: none


@dataclass(frozen=True)
class RetryConfig:
    """HTTPRoute retry: retries after the first try, on which codes, base backoff."""

    attempts: int = 1
    codes: frozenset[int] = frozenset()
    backoff_ms: int = 25


@dataclass(frozen=True)
class RouteRule:
    """One rule of one HTTPRoute, after conversion from the config model."""

    route: str  # "<namespace>/<name>" of the HTTPRoute ("" for the default route)
    index: int
    matches: tuple[RouteMatch, ...]
    backends: tuple[BackendTarget, ...]
    filters: Filters = field(default_factory=Filters)
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryConfig | None = None
    port: int | None = None  # parentRef port: the rule only serves this service port

    @property
    def name(self) -> str:
        return f"{self.route}#{self.index}" if self.route else "default"


@dataclass(frozen=True)
class RouteSelection:
    rule: RouteRule
    match: RouteMatch


class RouteTable:
    """All rules for one service, ordered once at build time; `select` is a linear
    scan in precedence order."""

    def __init__(self, rules: Sequence[RouteRule]) -> None:
        pairs: list[tuple[tuple[int, ...], int, RouteRule, RouteMatch]] = []
        for order, rule in enumerate(rules):
            for m in rule.matches or (RouteMatch(),):
                pairs.append(((*m.precedence(),), order, rule, m))
        pairs.sort(key=lambda p: (p[0], p[1]))
        self._pairs = [(rule, m) for _, _, rule, m in pairs]

    def __len__(self) -> int:
        return len(self._pairs)

    def select(self, req: RequestHead, port: int | None = None) -> RouteSelection | None:
        for rule, m in self._pairs:
            if rule.port is not None and port is not None and rule.port != port:
                continue
            if m.matches(req):
                return RouteSelection(rule, m)
        return None

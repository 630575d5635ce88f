"""YAML (multi-document) -> validated objects, or a ConfigError naming every problem.

Validation is all-or-nothing per call: callers apply nothing unless everything passed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mesh.config.base import ObjectKey, Resource
from mesh.config.errors import ConfigError, ConfigIssue
from mesh.config.kinds import KINDS

# libyaml when present: the pure-Python parser is ~10x slower on large files.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SUBPATH = re.compile(r"^([A-Za-z_][\w]*(?:\[[^\]]+\]|\.[A-Za-z_][\w]*)*|\[[^\]]+\]): (.+)$", re.S)


@dataclass(frozen=True)
class Document:
    """One validated document, with where it came from and its raw form (persisted as
    written, so a user's fields and order survive)."""

    resource: Resource
    raw: dict[str, Any]
    file: str
    index: int

    @property
    def key(self) -> ObjectKey:
        return self.resource.key


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int) or "/" in part or "." in part:
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _join(path: str, sub: str) -> str:
    if not path:
        return sub
    if sub.startswith("["):
        return path + sub
    return f"{path}.{sub}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _num(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Istio fields users carry over that we do not enforce: refused (never ignored), with why.
_JWT = ("request principals come from JWT authentication, which ambient-mesh does not do; "
        "the policy is refused rather than enforced without it")
_REMOTE = ("remote IPs come from X-Forwarded-For, which ambient-mesh does not trust; use "
           "ipBlocks; the policy is refused rather than enforced without it")
_ISTIO_UNSUPPORTED = {
    "requestPrincipals": _JWT, "notRequestPrincipals": _JWT,
    "remoteIpBlocks": _REMOTE, "notRemoteIpBlocks": _REMOTE,
    "serviceAccounts": "use principals (cluster.local/ns/<ns>/sa/<sa>)",
    "notServiceAccounts": "use notPrincipals (cluster.local/ns/<ns>/sa/<sa>)",
    "provider": "CUSTOM authorization (external authorizers) is not supported",
    "portLevelMtls": "ambient mode has no per-port mTLS (as Istio ambient); use one "
                     "PeerAuthentication mode per workload",
}


def _reason(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    got = f" (got {_short(value)})" if not isinstance(value, dict | list) else ""
    simple = {
        "greater_than_equal": lambda: f"must be >= {_num(ctx.get('ge'))}",
        "greater_than": lambda: f"must be > {_num(ctx.get('gt'))}",
        "less_than_equal": lambda: f"must be <= {_num(ctx.get('le'))}",
        "less_than": lambda: f"must be < {_num(ctx.get('lt'))}",
        "int_parsing": lambda: "must be an integer",
        "int_type": lambda: "must be an integer",
        "int_from_float": lambda: "must be a whole number",
        "float_parsing": lambda: "must be a number",
        "float_type": lambda: "must be a number",
        "bool_parsing": lambda: "must be true or false",
        "bool_type": lambda: "must be true or false",
        "string_type": lambda: "must be a string",
        "list_type": lambda: "must be a list",
        "dict_type": lambda: "must be a mapping",
        "model_type": lambda: "must be a mapping",
        "model_attributes_type": lambda: "must be a mapping",
        "literal_error": lambda: f"must be one of {ctx.get('expected')}",
        "string_pattern_mismatch": lambda: f"must match {ctx.get('pattern')}",
    }
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        field = str(err["loc"][-1]) if err.get("loc") else ""
        if field in _ISTIO_UNSUPPORTED:
            return f"not supported: {_ISTIO_UNSUPPORTED[field]}"
        return "unknown field"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s)"
    if kind == "string_too_short":
        return "must not be empty"
    if kind in ("value_error", "assertion_error"):
        msg = str(ctx.get("error", err.get("msg", "")))
        return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in simple:
        return simple[kind]() + got
    return str(err.get("msg", kind)) + got


def _issues_from_validation(
    e: ValidationError, file: str, index: int, ref: str
) -> list[ConfigIssue]:
    issues = []
    for err in e.errors():
        path = _format_loc(tuple(err["loc"]))
        reason = _reason(err)
        while (m := _SUBPATH.match(reason)) and " " not in m.group(1):
            path, reason = _join(path, m.group(1)), m.group(2)
        issues.append(ConfigIssue(file, index, ref, path, reason))
    return issues


def _object_ref(raw: Mapping[str, Any], kind: str, namespaced: bool) -> str:
    meta = raw.get("metadata")
    if not isinstance(meta, Mapping):
        return kind
    name = meta.get("name")
    if not isinstance(name, str):
        return kind
    ns = meta.get("namespace") or "default"
    return f"{kind} {ns}/{name}" if namespaced else f"{kind} {name}"


def validate_document(raw: Any, file: str, index: int) -> Resource:
    """Validate one parsed document; raises ConfigError listing all its problems."""
    if not isinstance(raw, dict):
        raise ConfigError([ConfigIssue(file, index, "", "", "document must be a mapping")])
    kind = raw.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ConfigError([ConfigIssue(file, index, "", "kind", "required field is missing")])
    cls = KINDS.get(kind)
    if cls is None:
        raise ConfigError([ConfigIssue(
            file, index, "", "kind", f"unknown kind {kind!r} (known: {', '.join(sorted(KINDS))})"
        )])
    ref = _object_ref(raw, kind, cls.NAMESPACED)
    api = raw.get("apiVersion")
    if api not in cls.API_VERSIONS:
        raise ConfigError([ConfigIssue(
            file, index, ref, "apiVersion",
            f"must be {' or '.join(cls.API_VERSIONS)} for {kind} (got {api!r})",
        )])
    try:
        obj = cls.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_issues_from_validation(e, file, index, ref)) from None
    if cls.NAMESPACED:
        if not obj.metadata.namespace:
            obj.metadata.namespace = "default"
    else:
        obj.metadata.namespace = ""
    return obj


def parse_documents(text: str, file: str) -> list[Document]:
    """Parse and validate every document of a YAML text; all-or-nothing."""
    issues: list[ConfigIssue] = []
    docs: list[Document] = []
    seen: dict[ObjectKey, int] = {}
    index = 0
    try:
        for raw in yaml.load_all(text, Loader=_Loader):
            index += 1
            if raw is None:
                continue
            try:
                obj = validate_document(raw, file, index)
            except ConfigError as e:
                issues.extend(e.issues)
                continue
            if obj.key in seen:
                issues.append(ConfigIssue(
                    file, index, str(obj.key), "",
                    f"duplicate object (also in doc {seen[obj.key]})",
                ))
                continue
            seen[obj.key] = index
            docs.append(Document(obj, raw, file, index))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        issues.append(ConfigIssue(file, index + 1, "", "", f"invalid YAML: {where}{problem}"))
    if issues:
        raise ConfigError(issues)
    return docs


def load_file(path: Path) -> list[Document]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([ConfigIssue(path.name, 0, "", "", f"cannot read file: {e}")]) from e
    return parse_documents(text, path.name)

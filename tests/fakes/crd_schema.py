"""What a real API server does to a custom resource before storing it, from its CRD's
structural schema, for the fake API server.

- Pruning: fields the schema does not declare are dropped, unless the node says
  `x-kubernetes-preserve-unknown-fields: true` (maps declared with
  `additionalProperties` keep their keys). With `fieldValidation=Strict` (kubectl's
  default since 1.25) an unknown field is a 400 instead; with `Warn` (the server's
  default) each dropped field is a `Warning` header; `Ignore` drops them silently.
- Validation of the pruned object against the schema: required, enum, type,
  min/maxProperties, min/maxItems, minLength, pattern, minimum/maximum, not/anyOf.
  A failure is a 422 whose Status body is shaped as the real one (reason Invalid,
  details.causes with reason/message/field, message "<Kind>.<group> "<name>" is
  invalid: <field>: <detail>").

Objects already stored are not re-validated when a CRD changes (as on a real
cluster), so tests can install an older, laxer CRD to store what it let through."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

Obj = dict[str, Any]
CRD_DIR = Path(__file__).resolve().parents[2] / "daemonset" / "base" / "crds"
_ROOT_KEEP = ("apiVersion", "kind", "metadata")
FIELD_VALIDATIONS = ("Ignore", "Warn", "Strict")


class Refused(Exception):
    """A write the API server refuses; `status` is the Status body it answers with."""

    def __init__(self, status: Obj) -> None:
        super().__init__(status["message"])
        self.status = status
        self.code: int = status["code"]
        self.warnings: list[str] = []


@dataclass(frozen=True)
class CrdVersion:
    """One served version of a CRD."""

    group: str
    version: str
    kind: str
    plural: str
    schema: Obj
    status_subresource: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def crd_versions(crd: Obj) -> list[CrdVersion]:
    spec = crd["spec"]
    return [CrdVersion(spec["group"], v["name"], spec["names"]["kind"], spec["names"]["plural"],
                       v["schema"]["openAPIV3Schema"],
                       "status" in (v.get("subresources") or {}))
            for v in spec["versions"] if v.get("served", True)]


def load_crds(paths: Iterable[Path] | None = None) -> list[CrdVersion]:
    """The CRDs the project ships (daemonset/base/crds), or the given files."""
    out: list[CrdVersion] = []
    for path in sorted(paths if paths is not None else CRD_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                out.extend(crd_versions(doc))
    return out


# ---- pruning ---------------------------------------------------------------------

def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _prune(value: Any, schema: Obj, path: str, dropped: list[str]) -> Any:
    if isinstance(value, dict):
        props: Obj = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        out = {}
        for key, sub in value.items():
            if key in props:
                out[key] = _prune(sub, props[key], _child(path, key), dropped)
            elif isinstance(extra, dict):
                out[key] = _prune(sub, extra, f"{path}[{key}]", dropped)
            elif preserve or extra is True:
                out[key] = sub
            else:
                dropped.append(_child(path, key))
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_prune(v, schema["items"], f"{path}[{i}]", dropped)
                for i, v in enumerate(value)]
    return value


def prune(obj: Obj, schema: Obj) -> tuple[Obj, list[str]]:
    """(the object as stored, the paths of the fields dropped)."""
    dropped: list[str] = []
    body = {k: v for k, v in obj.items() if k not in _ROOT_KEEP}
    pruned = _prune(body, schema, "", dropped)
    out = {k: copy.deepcopy(obj[k]) for k in _ROOT_KEEP if k in obj}
    out.update(pruned)
    return out, dropped


# ---- validation ------------------------------------------------------------------

def _is_int_or_string(branches: Any) -> bool:
    return isinstance(branches, list) and len(branches) == 2 and \
        branches[0] == {"type": "integer"} and branches[1].get("type") == "string"


def _json_schema(node: Obj) -> Obj:
    """The OpenAPI v3 subset of a structural schema as JSON Schema (draft 7)."""
    out: Obj = {}
    for k, v in node.items():
        if k == "properties":
            out[k] = {name: _json_schema(sub) for name, sub in v.items()}
        elif k in ("items", "additionalProperties", "not") and isinstance(v, dict):
            out[k] = _json_schema(v)
        elif k in ("anyOf", "allOf", "oneOf"):
            out[k] = [_json_schema(s) for s in v]
        elif not k.startswith("x-kubernetes-") and k not in ("description", "nullable"):
            out[k] = v
    if node.get("x-kubernetes-int-or-string"):
        pattern = out.pop("pattern", None)  # a pattern applies to the string form only
        string: Obj = {"type": "string", **({"pattern": pattern} if pattern else {})}
        return {"anyOf": [{"type": "integer"}, string]}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _field(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out = out + f"[{part}]" if isinstance(part, int) else _child(out, str(part))
    return out


_JSON_TYPES = {"dict": "object", "list": "array", "str": "string", "int": "integer",
               "float": "number", "bool": "boolean", "NoneType": "null"}


def _quote(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return json.dumps(value)


def _cause(err: jsonschema.ValidationError) -> list[Obj]:
    """The field errors a real API server reports for one schema violation."""
    where = _field(err.absolute_path)
    kind, want, got = err.validator, err.validator_value, err.instance
    if kind == "required":
        missing = [n for n in want if isinstance(got, dict) and n not in got]
        return [{"reason": "FieldValueRequired", "message": "Required value",
                 "field": _child(where, n)} for n in missing]
    if kind == "enum":
        supported = ", ".join(json.dumps(v) for v in want)
        return [{"reason": "FieldValueNotSupported", "field": where,
                 "message": f"Unsupported value: {_quote(got)}: supported values: {supported}"}]
    if kind == "type":
        return [{"reason": "FieldValueTypeInvalid", "field": where,
                 "message": f"Invalid value: {_quote(got)}: {where} in body must be of type "
                            f"{want if isinstance(want, str) else ','.join(want)}: "
                            f"{_quote(_JSON_TYPES.get(type(got).__name__, type(got).__name__))}"}]
    if kind in ("not", "anyOf"):  # the real server names no field for a junctor
        node = str(err.absolute_path[-1]) if err.absolute_path else "body"
        verb = "must not validate the schema (not)" if kind == "not" else \
            "must validate at least one schema (anyOf)"
        return [{"reason": "FieldValueInvalid", "field": "<nil>",
                 "message": f'Invalid value: "": "{node}" {verb}'}]
    if kind == "maxItems":
        return [{"reason": "FieldValueTooMany", "field": where,
                 "message": f"Too many: {len(got)}: must have at most {want} items"}]
    details = {
        "minProperties": lambda: (len(got), f"should have at least {want} properties"),
        "maxProperties": lambda: (len(got), f"should have at most {want} properties"),
        "minItems": lambda: (len(got), f"should have at least {want} items"),
        "minLength": lambda: (got, f"should be at least {want} chars long"),
        "maxLength": lambda: (got, f"should be at most {want} chars long"),
        "pattern": lambda: (got, f"should match '{want}'"),
        "minimum": lambda: (got, f"should be greater than or equal to {want}"),
        "maximum": lambda: (got, f"should be less than or equal to {want}"),
    }
    if kind in details:
        value, detail = details[kind]()
        return [{"reason": "FieldValueInvalid", "field": where,
                 "message": f"Invalid value: {_quote(value)}: {where} in body {detail}"}]
    return [{"reason": "FieldValueInvalid", "field": where,
             "message": f"Invalid value: {_quote(got)}: {err.message}"}]


def _leaves(err: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    if err.validator == "anyOf" and err.context:
        if _is_int_or_string(err.validator_value):
            # int-or-string: report the branch that fits the value's type.
            typed = [e for e in err.context if e.validator != "type"]
            return typed or [err]
        # As the real server: the anyOf itself, then only its first branch's errors.
        return [err] + [e for e in err.context if e.schema_path and e.schema_path[0] == 0]
    return [err]


def validate(obj: Obj, schema: Obj) -> list[Obj]:
    """The causes a real API server would list, in field order ([] when valid)."""
    body = {k: v for k, v in obj.items() if k != "metadata"}
    validator = jsonschema.Draft7Validator(_json_schema(schema))
    causes = [c for e in validator.iter_errors(body) for leaf in _leaves(e)
              for c in _cause(leaf)]
    return sorted(causes, key=lambda c: c["field"])


# ---- admission -------------------------------------------------------------------

def invalid(crd: CrdVersion, name: str, causes: list[Obj]) -> Refused:
    errors = [f"{c['field']}: {c['message']}" for c in causes]
    joined = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
    return Refused({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f'{crd.kind}.{crd.group} "{name}" is invalid: {joined}',
        "reason": "Invalid",
        "details": {"name": name, "group": crd.group, "kind": crd.kind, "causes": causes},
        "code": 422})


_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_MISSING = object()


def _value_at(obj: Any, field: str) -> Any:
    cur = obj
    for name, index in _TOKEN.findall(field):
        if index:
            i = int(index)
            cur = cur[i] if isinstance(cur, list) and i < len(cur) else _MISSING
        else:
            cur = cur.get(name, _MISSING) if isinstance(cur, dict) else _MISSING
        if cur is _MISSING:
            break
    return cur


def ratchet(causes: list[Obj], new: Obj, old: Obj | None) -> list[Obj]:
    """Validation ratcheting (on by default since Kubernetes 1.30): on an update, an
    error in a part of the object the update leaves unchanged is not reported, so an
    object stored under a laxer CRD can still be relabelled. Our lists are atomic, so
    their items are not correlated: an error inside a list counts as unchanged only if
    the whole outermost list is. (Errors naming no field compare the whole spec.)"""
    if old is None:
        return causes
    kept = []
    for c in causes:
        field = "spec" if c["field"] == "<nil>" else c["field"].split("[", 1)[0]
        if _value_at(new, field) != _value_at(old, field):
            kept.append(c)
    return kept


def spec_changed(new: Obj, old: Obj) -> bool:
    """What moves metadata.generation: anything but metadata and status."""
    def body(o: Obj) -> Obj:
        return {k: v for k, v in o.items() if k not in ("metadata", "status")}
    return body(new) != body(old)


def admit(crd: CrdVersion, obj: Obj, field_validation: str = "Warn", old: Obj | None = None
          ) -> tuple[Obj, list[str]]:
    """(the object as the API server stores it, warnings), or raises Refused; `old` is
    the stored version on an update (ratcheting)."""
    if field_validation not in FIELD_VALIDATIONS:
        raise Refused({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"fieldValidation {field_validation!r} is invalid: must be one of "
                       f"{', '.join(FIELD_VALIDATIONS)}", "reason": "BadRequest", "code": 400})
    stored, dropped = prune(obj, crd.schema)
    if dropped and field_validation == "Strict":
        fields = ", ".join(f'unknown field "{d}"' for d in dropped)
        raise Refused({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f'{crd.kind} in version "{crd.version}" cannot be handled as a '
                       f"{crd.kind}: strict decoding error: {fields}",
            "reason": "BadRequest", "code": 400})
    warnings = [f'unknown field "{d}"' for d in dropped] if field_validation == "Warn" else []
    causes = ratchet(validate(stored, crd.schema), stored, old)
    if causes:
        refused = invalid(crd, str((obj.get("metadata") or {}).get("name", "")), causes)
        refused.warnings = warnings  # the real server warns on a refusal too
        raise refused
    return stored, warnings


def patch_refusal(content_type: str, body: str) -> Refused | None:
    """What a real API server answers a PATCH of a custom resource whose body does not
    fit its content type (None: acceptable). kubernetes_asyncio sends a dict body as
    application/json-patch+json unless told otherwise, which the real server refuses."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "application/strategic-merge-patch+json":
        return Refused({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the body of the request was in an unknown format - accepted media "
                       "types include: application/json-patch+json, "
                       "application/merge-patch+json, application/apply-patch+yaml",
            "reason": "UnsupportedMediaType", "code": 415})
    if ctype == "application/json-patch+json":
        try:
            ops = json.loads(body)
        except ValueError:
            ops = None
        if isinstance(ops, list):
            return None  # a real JSON patch: applied (tests/fakes/ssa.json_patch)
        message = ("error decoding patch: json: cannot unmarshal object into Go value of "
                   "type []handlers.jsonPatchOp")
        return Refused({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "message": message, "reason": "BadRequest",
                        "code": 400})
    return None


# ---- an older CRD, for tests of what a cluster may already hold -------------------

_LAX_DROPS = ("x-kubernetes-preserve-unknown-fields", "minProperties", "minItems", "maxItems",
              "minLength")


def _lax(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _lax(v) for k, v in node.items() if k not in _LAX_DROPS}
    if isinstance(node, list):
        return [_lax(v) for v in node]
    return node


def shipped_crd(kind: str) -> Obj:
    """The CustomResourceDefinition document the project ships for `kind`."""
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition" \
                    and doc["spec"]["names"]["kind"] == kind:
                return dict(doc)
    raise KeyError(f"no CRD for {kind} in {CRD_DIR}")


def legacy_crd(kind: str) -> Obj:
    """The shipped CRD without its fail-closed constraints, as clusters installed before
    them still run it: unknown fields are pruned and emptied objects accepted, so a
    typo'd `principal:` is stored as `source: {}`."""
    crd = shipped_crd(kind)
    spec = dict(crd["spec"])
    spec["versions"] = [{**v, "schema": {"openAPIV3Schema": _lax(v["schema"]["openAPIV3Schema"])}}
                        for v in spec["versions"]]
    return {**crd, "spec": spec}

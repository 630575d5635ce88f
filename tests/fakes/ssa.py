"""Server-side apply and field ownership for the fake API server, as the real one does
them (k8s.io/apimachinery structured-merge-diff), for the parts our controller meets:

- every write records which manager set which field in `metadata.managedFields`
  (operation `Apply` for apply patches, `Update` for PUT/merge/JSON patches);
- an apply merges the applied configuration into the live object: maps field by field,
  lists of the built-in types that the real schema declares `listType=map` item by item
  by their keys (Service `spec.ports` by port+protocol, container `ports` by
  containerPort+protocol, containers/env/volumes by name, ...), every other list as
  a whole (atomic, like our CRDs' lists);
- a field another manager owns with a different value is a 409 `Conflict` with one
  cause per field, unless `force=true` takes it over;
- fields a manager applied before and leaves out of its next apply are removed when
  nobody else owns them;
- an Update takes ownership of what it changed away from every other manager.

So a hand edit that changes a list item's key (a Service port 15008 -> 15009) leaves
the controller's next apply adding a second item, which the validation below refuses
with the real 422 `Duplicate value` (issue 15), instead of silently replacing the list.
"""

from __future__ import annotations

import copy
import json
from typing import Any

Obj = dict[str, Any]
Path = tuple[str, ...]  # ("f:spec", "f:ports", "k:{...}", "f:name"); "." marks an item

_CONTAINER = {"": ("name",), "ports": ("containerPort", "protocol"), "env": ("name",),
              "volumeMounts": ("mountPath",)}
_POD = ("spec", "template", "spec")


def _pod_lists(prefix: tuple[str, ...]) -> dict[tuple[str, ...], tuple[str, ...]]:
    out: dict[tuple[str, ...], tuple[str, ...]] = {(*prefix, "volumes"): ("name",)}
    for containers in ("containers", "initContainers"):
        for sub, key in _CONTAINER.items():
            out[prefix + (containers,) + (("[]", sub) if sub else ())] = key
    return out


# listType=map lists of the kinds we write, with their keys (the real OpenAPI's
# x-kubernetes-list-map-keys); every other list is atomic.
KEYED: dict[str, dict[tuple[str, ...], tuple[str, ...]]] = {
    "Service": {("spec", "ports"): ("port", "protocol")},
    "Deployment": _pod_lists(_POD),
    "DaemonSet": _pod_lists(_POD),
    "Pod": _pod_lists(("spec",)),
}
_COMMON_KEYED: dict[tuple[str, ...], tuple[str, ...]] = {
    ("metadata", "ownerReferences"): ("uid",)}
_KEY_DEFAULTS = {"protocol": "TCP"}
# Not fields anyone manages.
_SKIP_META = {"name", "namespace", "uid", "resourceVersion", "creationTimestamp",
              "generation", "managedFields", "deletionTimestamp"}


def _keyed(kind: str) -> dict[tuple[str, ...], tuple[str, ...]]:
    return {**_COMMON_KEYED, **KEYED.get(kind, {})}


def _item_key(item: Any, keys: tuple[str, ...]) -> str:
    item = item if isinstance(item, dict) else {}
    return "k:" + json.dumps({k: item.get(k, _KEY_DEFAULTS.get(k)) for k in keys},
                             separators=(",", ":"), sort_keys=True)


def field_set(obj: Obj, kind: str) -> set[Path]:
    """The leaf fields `obj` sets, as structured-merge-diff names them."""
    keyed = _keyed(kind)
    out: set[Path] = set()

    def walk(value: Any, schema: tuple[str, ...], path: Path) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                if not schema and k in ("apiVersion", "kind", "status"):
                    continue
                if schema == ("metadata",) and k in _SKIP_META:
                    continue
                walk(v, (*schema, k), (*path, f"f:{k}"))
        elif isinstance(value, list) and schema in keyed:
            for item in value:
                item_path = (*path, _item_key(item, keyed[schema]))
                out.add((*item_path, "."))
                walk(item, (*schema, "[]"), item_path)
        elif path:
            out.add(path)

    walk(obj, (), ())
    return out


def _step(value: Any, part: str) -> Any:
    if part.startswith("f:"):
        return value.get(part[2:]) if isinstance(value, dict) else None
    if isinstance(value, list):
        keys = tuple(json.loads(part[2:]))
        return next((i for i in value if _item_key(i, keys) == part), None)
    return None


def value_at(obj: Obj, path: Path) -> Any:
    cur: Any = obj
    for part in path:
        if part == ".":
            return True if cur is not None else None
        cur = _step(cur, part)
    return cur


def _remove(obj: Obj, path: Path) -> None:
    """Delete one leaf (or, for an item marker, the whole list item)."""
    if path[-1] == ".":
        path = path[:-1]
    parent = value_at(obj, path[:-1]) if len(path) > 1 else obj
    last = path[-1]
    if isinstance(parent, dict) and last.startswith("f:"):
        parent.pop(last[2:], None)
    elif isinstance(parent, list):
        keys = tuple(json.loads(last[2:]))
        parent[:] = [i for i in parent if _item_key(i, keys) != last]


def _prune_empty(obj: Obj, path: Path) -> None:
    """Drop the maps a removal left empty, up the path, as the real server does (a
    `selector` whose only label went is gone, not `selector: {matchLabels: {}}`)."""
    while path and path[-1].startswith("f:"):
        value = value_at(obj, path)
        if not (isinstance(value, dict) and not value):
            return
        _remove(obj, path)
        path = path[:-1]


def _merge(live: Any, applied: Any, schema: tuple[str, ...],
           keyed: dict[tuple[str, ...], tuple[str, ...]]) -> Any:
    if isinstance(live, dict) and isinstance(applied, dict):
        out = dict(live)
        for k, v in applied.items():
            out[k] = _merge(live.get(k), v, (*schema, k), keyed)
        return out
    if isinstance(live, list) and isinstance(applied, list) and schema in keyed:
        keys = keyed[schema]
        out_list = list(live)
        for item in applied:
            at = next((n for n, i in enumerate(out_list)
                       if _item_key(i, keys) == _item_key(item, keys)), None)
            if at is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[at] = _merge(out_list[at], item, (*schema, "[]"), keyed)
        return out_list
    return copy.deepcopy(applied)


# ---- managedFields in their wire form -------------------------------------------------

def to_fields_v1(paths: set[Path]) -> Obj:
    root: Obj = {}
    for path in sorted(paths):
        cur = root
        for part in path:
            cur = cur.setdefault(part, {})
    return root


def from_fields_v1(tree: Obj, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for part, sub in tree.items():
        if isinstance(sub, dict) and sub:
            out |= from_fields_v1(sub, (*prefix, part))
        else:
            out.add((*prefix, part))
    return out


Managers = dict[tuple[str, str], set[Path]]  # (manager, operation) -> fields


def managers_of(obj: Obj | None) -> Managers:
    out: Managers = {}
    for entry in ((obj or {}).get("metadata") or {}).get("managedFields") or []:
        out[(entry["manager"], entry["operation"])] = from_fields_v1(entry.get("fieldsV1") or {})
    return out


def _with_managers(obj: Obj, managers: Managers, api_version: str) -> Obj:
    obj.setdefault("metadata", {})["managedFields"] = [
        {"manager": m, "operation": op, "apiVersion": api_version, "fieldsType": "FieldsV1",
         "fieldsV1": to_fields_v1(paths)}
        for (m, op), paths in sorted(managers.items()) if paths]
    if not obj["metadata"]["managedFields"]:
        del obj["metadata"]["managedFields"]
    return obj


# ---- the two kinds of write -----------------------------------------------------------

class ApplyConflict(Exception):
    """409: fields owned by other managers with other values (no force)."""

    def __init__(self, conflicts: list[tuple[str, Path]]) -> None:
        self.conflicts = conflicts
        super().__init__(conflicts)

    def status(self) -> Obj:
        causes = [{"reason": "FieldManagerConflict", "message": f'conflict with "{m}"',
                   "field": _dotted(p)} for m, p in self.conflicts]
        n = len(self.conflicts)
        if n == 1:
            m, p = self.conflicts[0]
            lines = f'conflict with "{m}": {_dotted(p)}'
        else:  # structured-merge-diff's Conflicts.Error(): per manager, a "- " line each
            out: list[str] = []
            for m in sorted({m for m, _ in self.conflicts}):
                out.append(f'conflicts with "{m}":')
                out += [f"- {_dotted(p)}" for mm, p in self.conflicts if mm == m]
            lines = "\n".join(out)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": f"Apply failed with {n} conflict{'s' if n != 1 else ''}: {lines}",
                "reason": "Conflict", "details": {"causes": causes}, "code": 409}


def _dotted(path: Path) -> str:
    return "".join(f".{p[2:]}" if p.startswith("f:") else f"[{p[2:]}]"
                   for p in path if p != ".")


def apply(live: Obj | None, applied: Obj, kind: str, manager: str, *, force: bool,
          api_version: str) -> Obj:
    """The object after `manager` applies `applied` to `live` (None: create)."""
    fields = field_set(applied, kind)
    if live is None:
        return _with_managers(copy.deepcopy(applied), {(manager, "Apply"): fields},
                              api_version)
    managers = managers_of(live)
    conflicts: list[tuple[str, Path]] = []
    for (other, _op), owned in managers.items():
        if other == manager:
            continue
        for path in sorted(owned & fields):
            if path[-1] != "." and value_at(live, path) != value_at(applied, path):
                conflicts.append((other, path))
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    for other, path in conflicts:
        for (m, _op), owned in managers.items():
            if m == other:
                owned.discard(path)
    result = copy.deepcopy(live)
    previous = managers.get((manager, "Apply"), set())
    others = set().union(*(p for (m, op), p in managers.items() if (m, op) != (manager, "Apply")))
    # Whole items first (a leaf removed first would change the item's key).
    for path in sorted(previous - fields - others, key=lambda p: (p[-1] != ".", -len(p))):
        _remove(result, path)
        _prune_empty(result, path[:-1] if path[-1] != "." else path[:-2])
    meta_keep = {k: v for k, v in (result.get("metadata") or {}).items() if k in _SKIP_META}
    result = _merge(result, applied, (), _keyed(kind))
    result.setdefault("metadata", {}).update(meta_keep)
    managers[(manager, "Apply")] = fields
    return _with_managers(result, managers, api_version)


def update(old: Obj | None, new: Obj, kind: str, manager: str, api_version: str) -> Obj:
    """`new` with managedFields after `manager` wrote it with a PUT or a patch: it owns
    what it changed; fields that are gone are nobody's."""
    managers = managers_of(old)
    new_fields = field_set(new, kind)
    old_fields = field_set(old, kind) if old is not None else set()
    changed = {p for p in new_fields if p not in old_fields
               or (p[-1] != "." and value_at(new, p) != value_at(old or {}, p))}
    for key, owned in managers.items():
        managers[key] = (owned & new_fields) - changed
    mine = managers.setdefault((manager, "Update"), set())
    mine |= changed
    return _with_managers(new, managers, api_version)


def json_patch(obj: Obj, ops: list[Obj]) -> Obj:
    """RFC 6902 add/replace/remove (what `kubectl patch --type=json` sends)."""
    out = copy.deepcopy(obj)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~")
                 for p in str(op["path"]).split("/")[1:]]
        parent: Any = out
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op["op"] == "add":
                parent.insert(index, op["value"])
            elif op["op"] == "replace":
                parent[index] = op["value"]
            else:
                del parent[index]
        elif op["op"] == "remove":
            del parent[last]
        else:
            parent[last] = op["value"]
    return out


# ---- validation the real server does on the built-in kinds we write -----------------

def duplicate_port_names(obj: Obj, kind: str) -> list[tuple[str, str]]:
    """(field, value) of each port whose name repeats an earlier one in its list: the
    real apiserver's validation of Service ports and container ports."""
    lists: list[tuple[str, list[Any]]] = []
    if kind == "Service":
        lists.append(("spec.ports", (obj.get("spec") or {}).get("ports") or []))
    elif kind in ("Deployment", "DaemonSet"):
        pod = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {})
        for n, c in enumerate(pod.get("containers") or []):
            lists.append((f"spec.template.spec.containers[{n}].ports", c.get("ports") or []))
    out = []
    for prefix, ports in lists:
        seen: set[str] = set()
        for n, port in enumerate(ports):
            name = (port or {}).get("name")
            if name and name in seen:
                out.append((f"{prefix}[{n}].name", str(name)))
            if name:
                seen.add(name)
    return out


def missing_images(obj: Obj, kind: str) -> list[str]:
    """Fields of containers without an image (`Required value` on a real server)."""
    spec = obj.get("spec") or {}
    if kind in ("Deployment", "DaemonSet"):
        pod, prefix = ((spec.get("template") or {}).get("spec") or {}), "spec.template.spec"
    elif kind == "Pod":
        pod, prefix = spec, "spec"
    else:
        return []
    return [f"{prefix}.{group}[{n}].image"
            for group in ("initContainers", "containers")
            for n, c in enumerate(pod.get(group) or []) if not (c or {}).get("image")]

"""Table columns for `get`: Kubernetes-style objects in, (columns, rows) out. Pure, so
each kind's summary is unit tested without a controller."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

Obj = dict[str, Any]
Rows = tuple[list[str], list[list[str]]]

# What `get` accepts beyond the config kinds: groups of kinds.
GROUPS: dict[str, tuple[str, ...]] = {
    "policies": ("AuthorizationPolicy", "PeerAuthentication", "TrafficPolicy"),
    "policy": ("AuthorizationPolicy", "PeerAuthentication", "TrafficPolicy"),
    "routes": ("HTTPRoute",),
    "route": ("HTTPRoute",),
    "waypoints": ("Gateway",),
    "waypoint": ("Gateway",),
}


def _meta(o: Obj) -> Obj:
    meta = o.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _spec(o: Obj) -> Obj:
    spec = o.get("spec")
    return spec if isinstance(spec, dict) else {}


def _status(o: Obj) -> Obj:
    status = o.get("status")
    return status if isinstance(status, dict) else {}


def _ns(o: Obj) -> str:
    return str(_meta(o).get("namespace", ""))


def _name(o: Obj) -> str:
    return str(_meta(o).get("name", ""))


def _label_or_annotation(o: Obj, key: str) -> str:
    meta = _meta(o)
    return str((meta.get("annotations") or {}).get(key) or (meta.get("labels") or {}).get(key)
               or "")


def pods(items: Iterable[Obj], enrolled: set[str]) -> Rows:
    cols = ["NAMESPACE", "NAME", "STATUS", "NODE", "IP", "MESH"]
    rows = []
    for o in items:
        ref = f"{_ns(o)}/{_name(o)}"
        rows.append([_ns(o), _name(o), str(_status(o).get("phase", "")),
                     str(_spec(o).get("nodeName", "<pending>")),
                     str(_status(o).get("podIP", "")), "ambient" if ref in enrolled else "-"])
    return cols, rows


def services(items: Iterable[Obj]) -> Rows:
    cols = ["NAMESPACE", "NAME", "CLUSTER-IP", "PORTS", "WAYPOINT"]
    rows = []
    for o in items:
        ports = ",".join(
            f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in _spec(o).get("ports") or [])
        rows.append([_ns(o), _name(o), str(_spec(o).get("clusterIP", "<none>")), ports,
                     _label_or_annotation(o, "ambientmesh.io/use-waypoint") or "-"])
    return cols, rows


def _targets(spec: Obj) -> str:
    refs = spec.get("targetRefs") or []
    if refs:
        return ",".join(f"{r.get('kind')}/{r.get('name')}" for r in refs)
    selector = spec.get("selector") or {}
    labels = selector.get("matchLabels") or {}
    if labels:
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return "<namespace>"


def policies(items: Iterable[Obj]) -> Rows:
    cols = ["KIND", "NAMESPACE", "NAME", "ACTION/MODE", "APPLIES TO"]
    rows = []
    for o in items:
        spec = _spec(o)
        kind = str(o.get("kind", ""))
        if kind == "PeerAuthentication":
            what = str((spec.get("mtls") or {}).get("mode", "UNSET"))
        elif kind == "AuthorizationPolicy":
            what = str(spec.get("action", "ALLOW"))
        else:
            what = ",".join(k for k in spec if k not in ("targetRefs", "selector")) or "-"
        rows.append([kind, _ns(o), _name(o), what, _targets(spec)])
    return cols, rows


def routes(items: Iterable[Obj]) -> Rows:
    cols = ["NAMESPACE", "NAME", "PARENTS", "BACKENDS"]
    rows = []
    for o in items:
        spec = _spec(o)
        parents = ",".join(f"{p.get('kind', 'Service')}/{p.get('name')}"
                           + (f":{p['port']}" if p.get("port") else "")
                           for p in spec.get("parentRefs") or [])
        backends = []
        for rule in spec.get("rules") or []:
            for b in rule.get("backendRefs") or []:
                backends.append(f"{b.get('name')}:{b.get('port', '')}"
                                + (f" ({b.get('weight', 1)})" if len(rule["backendRefs"]) > 1
                                   else ""))
        rows.append([_ns(o), _name(o), parents, ", ".join(backends)])
    return cols, rows


def nodes(items: Iterable[Obj]) -> Rows:
    cols = ["NAME", "CONNECTED", "PODS", "POD-CIDRS"]
    rows = [[_name(o), "yes" if _status(o).get("connected") else "no",
             str(_status(o).get("pods", 0)), ",".join(_spec(o).get("podCIDRs") or [])]
            for o in items]
    return cols, rows


def generic(items: Iterable[Obj]) -> Rows:
    cols = ["KIND", "NAMESPACE", "NAME"]
    return cols, [[str(o.get("kind", "")), _ns(o), _name(o)] for o in items]


RowBuilder = Callable[[Iterable[Obj]], Rows]
BUILDERS: dict[str, RowBuilder] = {
    "Service": services, "HTTPRoute": routes, "Node": nodes,
    "AuthorizationPolicy": policies, "PeerAuthentication": policies, "TrafficPolicy": policies,
}


def rows_for(kinds: Sequence[str], items: list[Obj], enrolled: set[str] | None = None) -> Rows:
    if kinds == ["Pod"] or tuple(kinds) == ("Pod",):
        return pods(items, enrolled or set())
    builders = {BUILDERS.get(k, generic) for k in kinds}
    if len(builders) == 1:
        return next(iter(builders))(items)
    return generic(items)

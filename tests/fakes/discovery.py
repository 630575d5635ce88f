"""What kubectl needs from the fake API server to run `kubectl get`: legacy discovery
(/api, /apis, /api/v1, /apis/<group>/<version>) and server-side printing (a list asked
for `as=Table` answers a meta.k8s.io/v1 Table with the printer columns the real server
uses: for Gateway API kinds, the additionalPrinterColumns of the Gateway API CRDs of
standard-install.yaml), so tests can run the real kubectl against it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

Obj = dict[str, Any]


def _jsonpath(path: str) -> Callable[[Obj], str]:
    """The few JSONPath shapes the Gateway API printer columns use."""
    def get(obj: Obj) -> str:
        if path == ".status.addresses[*].value":
            return ",".join(str(a.get("value")) for a in
                            (obj.get("status") or {}).get("addresses") or [])
        if path.startswith('.status.conditions[?(@.type=="'):
            type_ = path.split('"')[1]
            return next((str(c.get("status")) for c in
                         (obj.get("status") or {}).get("conditions") or []
                         if c.get("type") == type_), "")
        cur: Any = obj
        for part in path.strip(".").split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if isinstance(cur, list):
            return ",".join(map(str, cur))
        return "" if cur is None else str(cur)
    return get


# kind -> (column name, type, JSONPath), as in gateway-api's standard-install.yaml.
PRINTER_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "GatewayClass": [("Controller", "string", ".spec.controllerName"),
                     ("Accepted", "string", '.status.conditions[?(@.type=="Accepted")].status')],
    "Gateway": [("Class", "string", ".spec.gatewayClassName"),
                ("Address", "string", ".status.addresses[*].value"),
                ("Programmed", "string", '.status.conditions[?(@.type=="Programmed")].status')],
    "HTTPRoute": [("Hostnames", "string", ".spec.hostnames")],
}


def discovery(path: str, types: Sequence[Any]) -> Obj | None:
    """The discovery document at `path`, or None when `path` is not one. `types` are
    the fake's ResourceTypes (group, version, plural, kind, namespaced)."""
    segs = [s for s in path.split("/") if s]
    if segs == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
    if segs == ["apis"]:
        groups: dict[str, list[str]] = {}
        for t in types:
            if t.group and t.version not in groups.setdefault(t.group, []):
                groups[t.group].append(t.version)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
             "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
            for g, vs in sorted(groups.items())]}
    if segs == ["api", "v1"] or (len(segs) == 3 and segs[0] == "apis"):
        group, version = ("", "v1") if segs[0] == "api" else (segs[1], segs[2])
        resources = []
        for t in types:
            if (t.group, t.version) != (group, version):
                continue
            verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
            resources.append({"name": t.plural, "singularName": t.kind.lower(),
                              "namespaced": t.namespaced, "kind": t.kind, "verbs": verbs})
            resources.append({"name": f"{t.plural}/status", "singularName": "",
                              "namespaced": t.namespaced, "kind": t.kind,
                              "verbs": ["get", "patch", "update"]})
        if not resources:
            return None
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources}
    return None


def _age(obj: Obj) -> str:
    created = (obj.get("metadata") or {}).get("creationTimestamp")
    if not created:
        return "<unknown>"
    then = dt.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return f"{int((dt.datetime.now(dt.UTC) - then).total_seconds())}s"


def table(kind: str, listing: Obj) -> Obj:
    """A list as the meta.k8s.io/v1 Table kubectl prints (`kubectl get`)."""
    columns = [("Name", "string", ".metadata.name"), *PRINTER_COLUMNS.get(kind, []),
               ("Age", "date", ".metadata.creationTimestamp")]
    rows = []
    for item in listing.get("items") or []:
        cells = [_age(item) if name == "Age" else _jsonpath(path)(item)
                 for name, _, path in columns]
        meta = item.get("metadata") or {}
        rows.append({"cells": cells, "object": {
            "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid",
                                               "resourceVersion", "creationTimestamp")
                         if k in meta}}})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": (listing.get("metadata") or {})
                         .get("resourceVersion", "")},
            "columnDefinitions": [{"name": n, "type": t, "format": "name" if n == "Name"
                                   else "", "description": "", "priority": 0}
                                  for n, t, _ in columns],
            "rows": rows}

"""Gateway API status, as Gateway API implementations write it, so `kubectl get
gatewayclass,gateway,httproute` says what the controller did with each object:

- GatewayClass `ambient-waypoint`: made by the controller when missing (as istiod makes
  its waypoint class), `Accepted` True.
- Gateway of that class: `Accepted` True, `Programmed` True once its waypoint
  Deployment has a ready replica (False `Pending` with why until then), and
  `status.addresses` the waypoint Service's cluster IP (the ADDRESS column).
- HTTPRoute: one `status.parents[]` entry per parentRef that is ours (a Service, as
  GAMMA mesh routes attach, or an ambient-waypoint Gateway) with `Accepted` (False with
  the controller's reason when it refuses the route) and `ResolvedRefs` (False
  `BackendNotFound` / `InvalidKind` naming the backend). Entries of other controllers
  are kept.

Every condition carries the object's `observedGeneration`; writes are merge patches of
the status subresource and repeat nothing already there (lastTransitionTime moves only
when a condition's status does), so replicas may all run this; a failed write is
retried."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio.client.exceptions import ApiException

from mesh.config import ObjectKey
from mesh.config.annotations import WAYPOINT_CLASS

_log = structlog.get_logger("controller.kube.gateway_status")
CONTROLLER_NAME = "ambientmesh.io/waypoint-controller"
GROUP, VERSION = "gateway.networking.k8s.io", "v1"
MERGE: dict[str, Any] = {"_content_type": "application/merge-patch+json"}  # not in stubs
RETRY_AFTER = 5.0
CLASS_RECHECK = 60.0
Raw = dict[str, Any]
Key = tuple[str, str]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, ok: bool, reason: str, message: str, generation: Any) -> Raw:
    out = {"type": type_, "status": "True" if ok else "False", "reason": reason,
           "message": message}
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def with_times(wanted: list[Raw], current: list[Any] | None) -> list[Raw]:
    """`wanted` with lastTransitionTime kept from `current` where a condition's status
    did not change (now otherwise), as the Gateway API's conditions require."""
    before = {c.get("type"): c for c in current or [] if isinstance(c, dict)}
    out = []
    for c in wanted:
        old = before.get(c["type"])
        keep = old is not None and old.get("status") == c["status"] \
            and old.get("lastTransitionTime")
        out.append({**c, "lastTransitionTime": old["lastTransitionTime"] if keep and old
                    else _now()})
    return out


def same(wanted: list[Raw], current: list[Any] | None) -> bool:
    strip = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
             for c in current or [] if isinstance(c, dict)]
    return strip == wanted


def gateway_status(gw: Mapping[str, Any], deployment: Mapping[str, Any] | None,
                   service: Mapping[str, Any] | None) -> tuple[list[Raw], list[Raw]]:
    """(conditions, addresses) of one ambient-waypoint Gateway."""
    meta = gw.get("metadata") or {}
    generation = meta.get("generation")
    where = f"{meta.get('namespace')}/{meta.get('name')}"
    ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
    if deployment is None:
        programmed = condition("Programmed", False, "Pending",
                               f"waypoint Deployment {where} not created yet", generation)
    elif ready < 1:
        programmed = condition("Programmed", False, "Pending",
                               f"waypoint Deployment {where} has no ready replica yet",
                               generation)
    else:
        programmed = condition("Programmed", True, "Programmed",
                               f"waypoint Deployment {where}: {ready} ready", generation)
    accepted = condition("Accepted", True, "Accepted",
                         f"{CONTROLLER_NAME} runs a waypoint for this Gateway", generation)
    ip = str(((service or {}).get("spec") or {}).get("clusterIP") or "")
    addresses = [{"type": "IPAddress", "value": ip}] if ip and ip != "None" else []
    return [accepted, programmed], addresses


def _is_ours(ref: Mapping[str, Any], route_ns: str, waypoints: set[Key]) -> bool:
    kind = ref.get("kind", "Gateway")
    group = ref.get("group", GROUP if kind == "Gateway" else "")
    if kind == "Service" and group in ("", "core"):
        return True
    return kind == "Gateway" and group == GROUP and \
        (str(ref.get("namespace") or route_ns), str(ref.get("name"))) in waypoints


def route_parents(route: Mapping[str, Any], refused: str | None, services: set[Key],
                  waypoints: set[Key]) -> list[Raw]:
    """Our status.parents entries of one HTTPRoute (conditions without times)."""
    meta, spec = route.get("metadata") or {}, route.get("spec") or {}
    ns, generation = str(meta.get("namespace") or ""), meta.get("generation")
    unresolved = ""
    for rule in spec.get("rules") or []:
        for backend in (rule or {}).get("backendRefs") or []:
            kind = backend.get("kind", "Service")
            backend_at = f"{backend.get('namespace') or ns}/{backend.get('name')}"
            if kind != "Service" or backend.get("group", "") not in ("", "core"):
                unresolved = unresolved or \
                    f"InvalidKind:backend {kind} {backend_at} is not a Service"
            elif (str(backend.get("namespace") or ns), str(backend.get("name"))) not in services:
                unresolved = unresolved or \
                    f"BackendNotFound:backend Service {backend_at} not found"
    if unresolved:
        reason, _, why = unresolved.partition(":")
        resolved = condition("ResolvedRefs", False, reason, why, generation)
    else:
        resolved = condition("ResolvedRefs", True, "ResolvedRefs", "all backends resolved",
                             generation)
    out = []
    for ref in spec.get("parentRefs") or []:
        if not isinstance(ref, dict) or not _is_ours(ref, ns, waypoints):
            continue
        target = (str(ref.get("namespace") or ns), str(ref.get("name")))
        if refused is not None:
            accepted = condition("Accepted", False, "UnsupportedValue",
                                 f"refused by the controller: {refused}", generation)
        elif ref.get("kind") == "Service" and target not in services:
            accepted = condition("Accepted", False, "NoMatchingParent",
                                 f"parent Service {target[0]}/{target[1]} not found",
                                 generation)
        else:
            accepted = condition("Accepted", True, "Accepted", "in force at the waypoint",
                                 generation)
        out.append({"parentRef": dict(ref), "controllerName": CONTROLLER_NAME,
                    "conditions": [accepted, resolved]})
    return out


class GatewayStatusWriter:
    def __init__(self, api: kclient.ApiClient, items: Callable[[str], list[Raw]],
                 owned: Callable[[str], Mapping[Key, Raw]],
                 refused: Callable[[], Mapping[ObjectKey, str]]) -> None:
        self._api = kclient.CustomObjectsApi(api)
        self._items = items
        self._owned = owned
        self._refused = refused
        self._dirty = asyncio.Event()
        self._class_made = False
        self._warned_no_crd = False
        self._class_checked_until = 0.0
        self.writes = 0

    def notify(self) -> None:
        self._dirty.set()

    async def run(self) -> None:
        self._dirty.set()
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not await self.reconcile():
                asyncio.get_running_loop().call_later(RETRY_AFTER, self._dirty.set)

    async def reconcile(self) -> bool:
        """Write every status that differs; False when a write failed (retried)."""
        ok = await self._gateway_class()
        waypoints: set[Key] = set()
        for gw in self._items("Gateway"):
            if (gw.get("spec") or {}).get("gatewayClassName") != WAYPOINT_CLASS:
                continue
            meta = gw.get("metadata") or {}
            key = (str(meta.get("namespace")), str(meta.get("name")))
            waypoints.add(key)
            conditions, addresses = gateway_status(
                gw, self._owned("Deployment").get(key), self._owned("Service").get(key))
            current = gw.get("status") or {}
            if same(conditions, current.get("conditions")) and \
                    addresses == (current.get("addresses") or []):
                continue
            ok &= await self._write(key, "gateways", {"status": {
                "conditions": with_times(conditions, current.get("conditions")),
                "addresses": addresses}})
        services = {(str((s.get("metadata") or {}).get("namespace")),
                     str((s.get("metadata") or {}).get("name")))
                    for s in self._items("Service")}
        refused = self._refused()
        for route in self._items("HTTPRoute"):
            meta = route.get("metadata") or {}
            key = (str(meta.get("namespace")), str(meta.get("name")))
            ours = route_parents(route, refused.get(ObjectKey("HTTPRoute", *key)), services,
                                 waypoints)
            current = [p for p in (route.get("status") or {}).get("parents") or []
                       if isinstance(p, dict)]
            mine = [p for p in current if p.get("controllerName") == CONTROLLER_NAME]
            if len(mine) == len(ours) and all(
                    a["parentRef"] == b.get("parentRef") and same(a["conditions"],
                                                                  b.get("conditions"))
                    for a, b in zip(ours, mine, strict=True)):
                continue
            before = {str(p.get("parentRef")): p.get("conditions") for p in mine}
            parents = [p for p in current if p.get("controllerName") != CONTROLLER_NAME] + [
                {**p, "conditions": with_times(p["conditions"],
                                               before.get(str(p["parentRef"])))}
                for p in ours]
            ok &= await self._write(key, "httproutes", {"status": {"parents": parents}})
        return ok

    async def _gateway_class(self) -> bool:
        """Make/accept the GatewayClass; re-read at most every CLASS_RECHECK seconds
        (the writer runs on every sync of the cluster, which may be many a second)."""
        now = asyncio.get_running_loop().time()
        if now < self._class_checked_until:
            return True
        ok = await self._gateway_class_now()
        if ok:
            self._class_checked_until = now + CLASS_RECHECK
        return ok

    async def _gateway_class_now(self) -> bool:
        accepted = [condition("Accepted", True, "Accepted",
                              f"handled by {CONTROLLER_NAME}", None)]
        try:
            try:
                gc = await self._api.get_cluster_custom_object(
                    GROUP, VERSION, "gatewayclasses", WAYPOINT_CLASS)
            except ApiException as e:
                if e.status != 404 or self._class_made:
                    raise
                gc = await self._create_class()
                if gc is None:
                    return True  # no Gateway API CRDs: nothing to report on (logged once)
            if (gc.get("spec") or {}).get("controllerName") != CONTROLLER_NAME:
                return True  # someone else's class of that name: not ours to judge
            generation = (gc.get("metadata") or {}).get("generation")
            accepted[0]["observedGeneration"] = generation
            if generation is None:
                del accepted[0]["observedGeneration"]
            current = (gc.get("status") or {}).get("conditions")
            if same(accepted, current):
                return True
            await self._api.patch_cluster_custom_object_status(
                GROUP, VERSION, "gatewayclasses", WAYPOINT_CLASS,
                {"status": {"conditions": with_times(accepted, current)}}, **MERGE)
            self.writes += 1
            return True
        except ApiException as e:
            _log.warning("status_write_failed", object=f"GatewayClass {WAYPOINT_CLASS}",
                         status=e.status, reason=e.reason,
                         fix="install the Gateway API CRDs; grant the controller get/create "
                             "on gatewayclasses and patch on gatewayclasses/status")
            return False

    async def _create_class(self) -> Raw | None:
        """Create the GatewayClass; None when Gateway API is not installed (404). Another
        replica creating it first (409) is fine: read theirs."""
        try:
            gc: Raw = await self._api.create_cluster_custom_object(
                GROUP, VERSION, "gatewayclasses", {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "GatewayClass",
                    "metadata": {"name": WAYPOINT_CLASS},
                    "spec": {"controllerName": CONTROLLER_NAME,
                             "description": "ambient-mesh waypoints (L7 proxies)"}})
        except ApiException as e:
            if e.status == 404:
                if not self._warned_no_crd:
                    _log.warning("gateway_api_not_installed",
                                 why="no GatewayClass resource on the API server",
                                 fix="install the Gateway API CRDs (docs/kubernetes.md)")
                    self._warned_no_crd = True
                return None
            if e.status != 409:
                raise
            gc = await self._api.get_cluster_custom_object(
                GROUP, VERSION, "gatewayclasses", WAYPOINT_CLASS)
        else:
            _log.info("gatewayclass_created", name=WAYPOINT_CLASS)
        self._class_made = True
        return gc

    async def _write(self, key: Key, plural: str, body: Raw) -> bool:
        try:
            await self._api.patch_namespaced_custom_object_status(
                GROUP, VERSION, key[0], plural, key[1], body, **MERGE)
        except ApiException as e:
            _log.warning("status_write_failed", object=f"{plural} {key[0]}/{key[1]}",
                         status=e.status, reason=e.reason,
                         fix=f"grant the controller patch on {plural}/status "
                             "(daemonset/base/rbac.yaml)" if e.status == 403 else "")
            return False
        self.writes += 1
        return True

"""The waypoint controller loop: watch the Deployments, Services, ServiceAccounts and
NetworkPolicies the controller owns (label selector), compare them with what the
waypoint Gateways need (waypoints.plan) and write the difference: an object deleted
or edited by hand comes back, the objects of a deleted Gateway go.

It re-plans on every change of the Gateways (through the registry) or of an owned
object, and every `resync` seconds, which retries writes the API server refused.
Writes are server-side apply under one field manager with force (a field someone
else took by hand is ours again), so any number of controller replicas may run this
loop: their writes are identical, and repeating one is a no-op for the API server.
Where an apply cannot converge (a hand edit re-keyed a list item, e.g. a Service port
15008 -> 15009: the apply adds ours beside it and the server refuses the pair with 422
`Duplicate value`), the object is replaced with our fields; every refusal is logged
with the API server's own message. Deletes carry the uid seen as a precondition, so a replica
acting on an old view never deletes an object that was just re-created."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import structlog
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio.client.exceptions import ApiException

from controller.kube.waypoints import (
    APPLY,
    FIELD_MANAGER,
    OWNED_SELECTOR,
    Key,
    ObjectId,
    WaypointPlan,
    covers,
    digest,
    overlay,
    plan,
    waypoint_gateways,
)
from mesh.kube.kinds import DEPLOYMENTS, NETWORK_POLICIES, SERVICE_ACCOUNTS, SERVICES
from mesh.kube.reflector import Reflector

_log = structlog.get_logger("controller.kube.waypoints")


def api_message(e: ApiException) -> str:
    """The API server's own words for a refused request (its Status message, e.g.
    `spec.ports[1].name: Duplicate value: "hbone"`), not just `422 Unprocessable
    Entity`."""
    try:
        message = json.loads(e.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"{e.status} {e.reason}: {message}" if message else f"{e.status} {e.reason}"
DEFAULT_RESYNC = 30.0


class WaypointReconciler:
    def __init__(self, api: kclient.ApiClient, gateways: Callable[[], list[dict[str, Any]]],
                 gateways_listed: Callable[[], bool], *, image: str, controller_addr: str,
                 resync: float = DEFAULT_RESYNC, watch_timeout: int = 300) -> None:
        self._core = kclient.CoreV1Api(api)
        self._apps = kclient.AppsV1Api(api)
        self._net = kclient.NetworkingV1Api(api)
        self._gateways = gateways
        self._gateways_listed = gateways_listed
        self._image = image
        self._controller_addr = controller_addr
        self._resync = resync
        self._dirty = asyncio.Event()
        self.owned = {k.kind: Reflector(k, api, self.notify, label_selector=OWNED_SELECTOR,
                                        watch_timeout=watch_timeout)
                      for k in (SERVICE_ACCOUNTS, DEPLOYMENTS, SERVICES, NETWORK_POLICIES)}
        self._applied: dict[ObjectId, str] = {}
        self.applies = 0  # objects written
        self.deletes = 0
        self.errors: dict[Key, str] = {}
        self.listeners: list[Callable[[], None]] = []

    def notify(self) -> None:
        """Something changed (a Gateway, an owned object): plan again soon, and tell
        the listeners (the Gateway status writer: a waypoint became ready)."""
        self._dirty.set()
        for listener in self.listeners:
            listener()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for reflector in self.owned.values():
                tg.create_task(reflector.run(), name=f"reflect owned {reflector.kind.kind}")
            tg.create_task(self._loop(), name="waypoint reconcile")

    async def _loop(self) -> None:
        while True:
            self._dirty.clear()
            try:
                await self.reconcile()
            except Exception as e:  # the API server may be away: retried on the next tick
                _log.warning("waypoint_reconcile_failed", error=str(e))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=self._resync)

    def plan(self, gateways: list[dict[str, Any]]) -> WaypointPlan:
        observed = {kind: (r.cache.objects if r.synced.is_set() else None)
                    for kind, r in self.owned.items()}
        return plan(gateways, observed, image=self._image,
                    controller_addr=self._controller_addr,
                    gateways_listed=self._gateways_listed(), last_applied=self._applied)

    async def reconcile(self) -> None:
        gateways = self._gateways()
        live = set(waypoint_gateways(gateways))
        # A Gateway deleted and made again must be written again.
        self._applied = {k: v for k, v in self._applied.items() if (k[1], k[2]) in live}
        self.errors = {ref: e for ref, e in self.errors.items() if ref in live}
        todo = self.plan(gateways)
        for ref, objects in todo.apply.items():
            failed = []
            for obj in objects:  # one refused object does not hold back the others
                try:
                    await self._converge(obj)
                except ApiException as e:
                    failed.append(f"{obj['kind']}: {api_message(e)}")
                    continue
                self._applied[(obj["kind"], *ref)] = digest(obj)
                self.applies += 1
            if failed:
                self.errors[ref] = "; ".join(failed)
                _log.warning("waypoint_apply_failed", gateway=f"{ref[0]}/{ref[1]}",
                             error=self.errors[ref], retry_in=self._resync)
                continue
            self.errors.pop(ref, None)
            _log.info("waypoint_applied", gateway=f"{ref[0]}/{ref[1]}",
                      objects=[o["kind"] for o in objects], image=self._image)
        for (kind, ns, name), uid in todo.delete:
            try:
                await self._delete(kind, ns, name, uid)
            except ApiException as e:
                if e.status not in (404, 409):  # gone already / re-created since: fine
                    _log.warning("waypoint_delete_failed", object=f"{kind} {ns}/{name}",
                                 error=f"{e.status} {e.reason}")
                continue
            self.deletes += 1
            _log.info("waypoint_object_deleted", object=f"{kind} {ns}/{name}",
                      reason="its ambient-waypoint Gateway is gone")

    async def _converge(self, obj: dict[str, Any]) -> None:
        """Apply `obj` (our field manager, force: fields others took are ours again);
        when the result still is not ours, replace. An apply cannot converge where a
        hand edit changed a keyed list item's key (a Service port 15008 -> 15009): the
        apply adds our item beside the edited one and the API server refuses the pair
        (422 `Duplicate value`), or leaves items others added. A replace (PUT of the
        live object with our fields, at its resourceVersion) sets the whole lists."""
        try:
            result = await self._apply(obj)
        except ApiException as e:
            if e.status != 422:
                raise
            why = api_message(e)
        else:
            if covers(result, obj):
                return
            why = "the applied object still differs (fields set by another manager)"
        await self._replace(obj, why)

    async def _replace(self, obj: dict[str, Any], why: str) -> None:
        name, ns, kind = obj["metadata"]["name"], obj["metadata"]["namespace"], obj["kind"]
        live = await self._call(kind, "read", name, ns)
        body = overlay(live, obj)
        body["metadata"].pop("managedFields", None)  # kept by the server as they are
        await self._call(kind, "replace", name, ns, body, field_manager=FIELD_MANAGER)
        _log.warning("waypoint_replaced", object=f"{kind} {ns}/{name}", why=why,
                     how="replaced with the controller's fields (an apply alone could "
                         "not converge)")

    async def _call(self, kind: str, verb: str, *args: Any, **kw: Any) -> dict[str, Any]:
        api, suffix = {"Deployment": (self._apps, "deployment"),
                       "NetworkPolicy": (self._net, "network_policy"),
                       "Service": (self._core, "service"),
                       "ServiceAccount": (self._core, "service_account")}[kind]
        # Raw JSON (no client models, which would drop fields they do not know); the
        # client raises for errors only when it preloads, so check here.
        resp = await getattr(api, f"{verb}_namespaced_{suffix}")(
            *args, _preload_content=False, **kw)
        data = await resp.read()
        if not 200 <= resp.status <= 299:
            error = ApiException(status=resp.status, reason=resp.reason)
            error.body = data.decode(errors="replace")
            raise error
        return dict(json.loads(data))

    async def _apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        name, ns = obj["metadata"]["name"], obj["metadata"]["namespace"]
        return await self._call(obj["kind"], "patch", name, ns, obj,
                                field_manager=FIELD_MANAGER, force=True,
                                _content_type=APPLY)

    async def _delete(self, kind: str, ns: str, name: str, uid: str) -> None:
        options = kclient.V1DeleteOptions(
            propagation_policy="Background",
            preconditions=kclient.V1Preconditions(uid=uid) if uid else None)
        if kind == "Deployment":
            await self._apps.delete_namespaced_deployment(name, ns, body=options)
        elif kind == "NetworkPolicy":
            await self._net.delete_namespaced_network_policy(name, ns, body=options)
        elif kind == "Service":
            await self._core.delete_namespaced_service(name, ns, body=options)
        else:
            await self._core.delete_namespaced_service_account(name, ns, body=options)

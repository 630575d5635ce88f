"""The kubernetes source: one reflector per watched kind, translated into the registry
whenever something changed (debounced, so a relist of thousands of objects is one
registry update), plus the pod facts a node agent reports in local mode."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from kubernetes_asyncio import client as kclient

from controller.kube.translate import translate
from controller.metrics import ControllerMetrics
from controller.registry import Registry
from controller.view import PodState, Ref
from mesh.config import ObjectKey
from mesh.kube.kinds import (
    AUTHORIZATION_POLICIES,
    ENDPOINT_SLICES,
    GATEWAYS,
    HTTP_ROUTES,
    NAMESPACES,
    PEER_AUTHENTICATIONS,
    PODS,
    SERVICES,
    TRAFFIC_POLICIES,
    WatchedKind,
)
from mesh.kube.reflector import Reflector

_log = structlog.get_logger("controller.kube.source")

CONTROLLER_KINDS: tuple[WatchedKind, ...] = (
    NAMESPACES, PODS, SERVICES, ENDPOINT_SLICES, GATEWAYS, HTTP_ROUTES,
    PEER_AUTHENTICATIONS, AUTHORIZATION_POLICIES, TRAFFIC_POLICIES,
)


class KubeSource:
    def __init__(self, api: kclient.ApiClient, registry: Registry, *,
                 kinds: Sequence[WatchedKind] = CONTROLLER_KINDS, debounce: float = 0.05,
                 watch_timeout: int = 300, metrics: ControllerMetrics | None = None) -> None:
        self.registry = registry
        self.debounce = debounce
        self.reflectors = {k.kind: Reflector(k, api, self._mark, watch_timeout=watch_timeout)
                           for k in kinds}
        # Objects the API server holds that the controller refuses: why, and what is
        # in force instead (their previous valid version, a stand-in, or nothing).
        self.rejected: dict[ObjectKey, str] = {}
        self.in_force: dict[ObjectKey, str] = {}
        self.metrics = metrics
        self.listeners: list[Callable[[], None]] = []  # called after every sync
        self.syncs = 0
        self._dirty = asyncio.Event()
        self._reported_nodes: set[str] = set()

    def _mark(self) -> None:
        self._dirty.set()

    # -- reads for other parts of kubernetes mode ------------------------------------

    def refusals(self) -> list[dict[str, Any]]:
        """Refused objects, shaped as the controller status' configErrors."""
        return [{"file": "kubernetes", "document": 0, "object": str(key), "path": "",
                 "reason": reason, "inForce": self.in_force.get(key, ""),
                 "message": f"{reason} (refused; in force: {self.in_force.get(key, '')})"}
                for key, reason in sorted(self.rejected.items())]

    def raw(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        reflector = self.reflectors.get(kind)
        return reflector.cache.objects.get((namespace, name)) if reflector else None

    def raw_items(self, kind: str) -> list[dict[str, Any]]:
        reflector = self.reflectors.get(kind)
        return reflector.cache.items() if reflector else []

    def listed(self, kind: str) -> bool:
        """Whether `kind` was listed at least once (its cache is the cluster's, not empty
        for want of a list)."""
        reflector = self.reflectors.get(kind)
        return reflector is not None and reflector.synced.is_set()

    async def wait_synced(self, report_every: float = 5.0) -> None:
        """Every kind listed, or known not to be served (its CRD answered 404), before
        the first snapshot: a snapshot built while, say, AuthorizationPolicies could
        not be listed (403, 500, a slow API server) would carry no policy, which
        proxies would read as "allow all". So the controller waits, however long, and
        says every `report_every` seconds which kinds it waits for and why."""
        while True:
            pending = [r for r in self.reflectors.values()
                       if not r.synced.is_set()
                       and not (r.kind.optional and r.not_served.is_set())]
            if not pending:
                break
            waits = [asyncio.ensure_future(e.wait()) for r in pending
                     for e in (r.synced, r.not_served)]
            done, _ = await asyncio.wait(waits, timeout=report_every)
            for w in waits:
                w.cancel()
            if not done:
                _log.warning("waiting_for_first_list",
                             kinds={r.kind.kind: r.last_error or "listing" for r in pending},
                             why="no snapshot is pushed before every kind is listed or "
                                 "known not to be installed (fail closed)")
        self.sync()

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for reflector in self.reflectors.values():
                tg.create_task(reflector.run(), name=f"reflect {reflector.kind.kind}")
            tg.create_task(self._sync_loop())

    async def _sync_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.debounce)
            self.sync()

    def sync(self) -> None:
        """Translate the caches into the registry (objects, then pod facts per node)."""
        self._dirty.clear()
        previous = {o.key: o for o in self.registry.objects()}
        result = translate({kind: r.cache.items() for kind, r in self.reflectors.items()},
                           previous)
        for key, reason in result.rejected.items():
            if self.rejected.get(key) != reason:
                _log.warning("object_refused", object=str(key), reason=reason,
                             in_force=result.in_force.get(key, ""),
                             fix="correct the object; nothing in it is applied until then")
                if self.metrics is not None:
                    self.metrics.config_rejected.labels("kubernetes").inc()
        for key in self.rejected.keys() - result.rejected.keys():
            _log.info("object_accepted_again", object=str(key))
        self.rejected, self.in_force = result.rejected, result.in_force
        self.registry.replace_config(result.objects)
        view = self.registry.view()
        by_node: dict[str, list[tuple[Ref, PodState]]] = defaultdict(list)
        for live in result.pods:
            pod = view.pods.get(live.ref)
            if pod is None or pod.node != live.node:
                continue
            by_node[live.node].append(
                (live.ref, PodState(pod.uid, live.node, live.ipv4, live.ipv6, live.phase)))
        for node in sorted(self._reported_nodes | by_node.keys()):
            self.registry.report_pods(node, by_node.get(node, []))
        self._reported_nodes = set(by_node)
        self.syncs += 1
        for listener in self.listeners:
            listener()
        _log.debug("synced", objects=len(result.objects), pods=len(result.pods),
                   generation=self.registry.generation)

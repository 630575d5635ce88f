"""Kubernetes mode assembled: API client, CA from its Secret, the kubernetes source
feeding the registry, TokenReview authentication on the gRPC server and the waypoint
reconciler, around the same Controller as local mode.

The gRPC server only opens after the first full list, so a proxy that reconnects to
a restarted controller is never pushed a snapshot of half a cluster."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from kubernetes_asyncio import client as kclient

from controller.app import Controller, ControllerSettings
from controller.kube.ca_secret import materialize_ca
from controller.kube.gateway_status import GatewayStatusWriter
from controller.kube.interceptor import KubeAuthInterceptor
from controller.kube.refusal_status import RefusalStatusWriter
from controller.kube.source import KubeSource
from controller.kube.tokenreview import DEFAULT_AUDIENCE, DEFAULT_NODEAGENT_SA, TokenReviewer
from controller.kube.waypoint_reconciler import DEFAULT_RESYNC, WaypointReconciler
from mesh.config.annotations import WAYPOINT_CLASS
from mesh.kube.client import api_client

_log = structlog.get_logger("controller.kube")


@dataclass(frozen=True)
class KubeSettings:
    kubeconfig: Path | None = None
    namespace: str = "ambient-system"
    nodeagent_sa: str = DEFAULT_NODEAGENT_SA
    audiences: Sequence[str] = (DEFAULT_AUDIENCE,)
    waypoint_image: str = "ambient-mesh:dev"
    # What waypoint pods dial: the controller's Service.
    controller_service: str = "ambient-controller.ambient-system.svc:15012"
    watch_timeout: int = 300
    manage_waypoints: bool = True
    # Waypoint objects are re-planned at least this often (and on every change).
    waypoint_resync: float = DEFAULT_RESYNC
    # Accepted tokens are trusted this long without asking the API server again.
    token_cache_seconds: float = 60.0


@contextlib.asynccontextmanager
async def kubernetes_controller(settings: ControllerSettings, kube: KubeSettings,
                                api: kclient.ApiClient | None = None
                                ) -> AsyncIterator[tuple[Controller, KubeSource]]:
    own_api = api is None
    api = api or await api_client(kube.kubeconfig)
    try:
        settings = dataclasses.replace(settings, source="kubernetes", watch=False)
        if settings.enable_ca:
            await materialize_ca(api, kube.namespace, settings.state_dir / "ca",
                                 settings.trust_domain)
        controller = Controller(settings)
        source = KubeSource(api, controller.registry, watch_timeout=kube.watch_timeout,
                            debounce=settings.debounce, metrics=controller.metrics)
        controller.refusals = source.refusals
        status_writer = RefusalStatusWriter(api, source.raw_items, lambda: source.rejected)
        source.listeners.append(status_writer.notify)

        def is_waypoint(namespace: str, name: str) -> bool:
            gw = source.raw("Gateway", namespace, name)
            return gw is not None and (gw.get("spec") or {}).get("gatewayClassName") \
                == WAYPOINT_CLASS

        controller.interceptors.append(KubeAuthInterceptor(
            TokenReviewer(api, audiences=kube.audiences, ttl=kube.token_cache_seconds),
            secret=controller.secret,
            nodeagent_sa=kube.nodeagent_sa,
            pods=lambda ns, name: source.raw("Pod", ns, name), is_waypoint=is_waypoint,
            metrics=controller.metrics))
        async with asyncio.TaskGroup() as tg:
            source_task = tg.create_task(source.run(), name="kubernetes source")
            status_task = tg.create_task(status_writer.run(), name="refusal status")
            await source.wait_synced()
            _log.info("kubernetes_synced", objects=len(controller.registry.objects()),
                      pods=len(controller.registry.view().pods))
            async with controller.running():
                tasks = [source_task, status_task]
                if kube.manage_waypoints:
                    reconciler = WaypointReconciler(
                        api, lambda: source.raw_items("Gateway"),
                        lambda: source.listed("Gateway"), image=kube.waypoint_image,
                        controller_addr=kube.controller_service, resync=kube.waypoint_resync,
                        watch_timeout=kube.watch_timeout)
                    controller.registry.subscribe(reconciler.notify)
                    tasks.append(tg.create_task(reconciler.run(), name="waypoints"))
                    owned = reconciler.owned
                    gateway_status = GatewayStatusWriter(
                        api, source.raw_items, lambda kind: owned[kind].cache.objects,
                        lambda: source.rejected)
                    source.listeners.append(gateway_status.notify)
                    reconciler.listeners.append(gateway_status.notify)
                    tasks.append(tg.create_task(gateway_status.run(), name="gateway status"))
                try:
                    yield controller, source
                finally:
                    for task in tasks:
                        task.cancel()
    finally:
        if own_api:
            await api.close()


async def serve(settings: ControllerSettings, kube: KubeSettings,
                stop: asyncio.Event) -> None:
    async with kubernetes_controller(settings, kube):
        await stop.wait()


async def serve_until_signal(settings: ControllerSettings, kube: KubeSettings) -> None:
    """`ambient-controller --source kubernetes`: serve until SIGTERM/SIGINT."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, kube, stop)
    _log.info("controller_stopped")

"""The dashboard's web server (aiohttp), bound to 127.0.0.1 only.

One background task refreshes the state every `REFRESH` seconds (metrics from
Prometheus or a direct scrape, denials from the access logs, health as `ambientctl
status` computes it); the page polls `/api/state` at the same pace. Serving never
waits on the mesh: a request gets the last state, with its age and any problems.

    GET /              the page (static/index.html)
    GET /static/...    its script, style and the vendored cytoscape.js
    GET /api/state     {source, updated, graph{nodes, edges}, workloads, denials,
                        health, problems}
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from ambientctl import health, observability, scrape
from ambientctl.context import MeshContext
from ambientctl.dashboard import denials, graph
from ambientctl.dashboard.sources import DirectSource, PrometheusSource, Reading
from ambientctl.errors import AmbientctlError
from mesh.telemetry.labels import workload_name

STATIC = Path(__file__).parent / "static"
REFRESH = 3.0
log = structlog.get_logger("ambientctl.dashboard")


class Dashboard:
    def __init__(self, mesh: MeshContext, prometheus: str | None = None) -> None:
        self.mesh = mesh
        self.prometheus = prometheus  # explicit URL; else the one `up` started, if any
        self.direct = DirectSource(self._scrape)
        self.state: dict[str, Any] = {"updated": None, "problems": ["collecting..."]}
        self.refreshes = 0
        self.failures = 0

    # ---- blocking collection (threads) ------------------------------------------------
    def _scrape(self) -> tuple[list[tuple[str, str]], list[str]]:
        settings = self.mesh.require_settings()
        runtime = self.mesh.runtime("dashboard")
        return scrape.metric_sources(self.mesh, runtime, settings.nodes, self._waypoints())

    def _waypoints(self) -> list[str]:
        try:
            with self.mesh.admin(timeout=3) as admin:
                return [str(w["name"]) for w in admin.status().get("waypoints", [])]
        except AmbientctlError:
            return []

    def _health(self) -> dict[str, Any]:
        from ambientctl.commands.status import gather

        return health.evaluate(gather(self.mesh)).as_dict()

    def _denials(self, waypoints: list[str]) -> list[graph.Denial]:
        """Denied connections, named as the metrics name workloads (deployment, else
        pod: mesh.telemetry.labels), so a denial lands on the same graph node."""
        settings = self.mesh.require_settings()
        runtime = self.mesh.runtime("dashboard")
        try:
            with self.mesh.admin(timeout=3) as admin:
                objects = admin.list_objects("Pod")
        except AmbientctlError:
            objects = []
        workload: dict[str, str] = {}
        by_account: dict[str, set[str]] = {}
        for o in objects:
            meta = o.get("metadata", {})
            ns, name = meta.get("namespace", ""), meta.get("name", "")
            ref = f"{ns}/{workload_name(name, meta.get('labels') or {})}"
            workload[f"{ns}/{name}"] = ref
            account = (o.get("spec") or {}).get("serviceAccountName") or "default"
            by_account.setdefault(f"/ns/{ns}/sa/{account}", set()).add(ref)
        by_ip: dict[str, str] = {}
        for p in runtime.list_pods():
            by_ip[str(p.ip)] = by_ip[str(p.ip6)] = workload.get(p.key, p.key)

        def who(address: str) -> str:
            """A source address or SPIFFE principal -> ns/workload ("" unknown); a
            principal names its workload when one workload runs as that account."""
            if address.startswith("spiffe://"):
                refs = by_account.get("/ns/" + address.partition("/ns/")[2], set())
                return next(iter(refs)) if len(refs) == 1 else ""
            return by_ip.get(address) or by_ip.get(address.rsplit(":", 1)[0], "")

        logs = [self.mesh.layout.log_file(n) for n in settings.nodes]
        for ref in waypoints:  # a waypoint pod's log, kept by its node agent
            ns, _, name = ref.partition("/")
            logs += sorted(self.mesh.layout.base.glob(f"nodes/*/logs/{ns}.{name}.*.log"))
        found = denials.from_logs(logs, who)
        return [dataclasses.replace(d, source=workload.get(d.source, d.source),
                                    target=workload.get(d.target, d.target))
                for d in found]

    # ---- one refresh ------------------------------------------------------------------
    async def refresh(self, session: aiohttp.ClientSession) -> None:
        problems: list[str] = []
        url = self.prometheus or observability.prometheus_url(self.mesh)
        reading: Reading | None = None
        if url:
            reading = await PrometheusSource(url, session).read()
            if reading.problems:
                problems += [*reading.problems, "falling back to scraping the proxies"]
                reading = None
        if reading is None:
            reading = await self.direct.read()
            problems += [f"no metrics from {p}" for p in reading.problems]
        waypoints, report = await asyncio.gather(
            asyncio.to_thread(self._waypoints), asyncio.to_thread(self._health))
        denied = await asyncio.to_thread(self._denials, waypoints)
        built = graph.build(reading, waypoints, denied)
        self.refreshes += 1
        self.state = {
            "cluster": self.mesh.cluster,
            "source": reading.source,
            "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "refreshSeconds": REFRESH,
            "graph": {"nodes": built["nodes"], "edges": built["edges"]},
            "workloads": built["workloads"],
            "denials": [asdict(d) for d in denied],
            "health": report,
            "problems": problems,
            "stale": False,
        }

    async def tick(self, session: aiohttp.ClientSession) -> None:
        """One refresh. On failure the last graph stays (marked stale, with why), but
        health does not: a page that cannot tell must not keep saying healthy."""
        try:
            await self.refresh(session)
        except Exception as e:
            self.failures += 1
            why = f"refresh failed: {getattr(e, 'message', None) or e}"
            log.warning("dashboard refresh failed", error=why, failures=self.failures)
            self.state = {**self.state, "stale": True, "problems": [why],
                          "health": {"healthy": False, "checks": [], "certificates": [],
                                     "problems": [f"health unknown: {why}"]}}

    async def loop(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                started = time.monotonic()
                await self.tick(session)
                await asyncio.sleep(max(0.2, REFRESH - (time.monotonic() - started)))

    # ---- web --------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/api/state", self._state)
        app.router.add_static("/static/", STATIC, show_index=False)
        app.cleanup_ctx.append(self._background)
        return app

    async def _background(self, _: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self.loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _index(self, _: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _state(self, _: web.Request) -> web.Response:
        return web.json_response(self.state, headers={"Cache-Control": "no-store"})


def serve(mesh: MeshContext, port: int, prometheus: str | None = None,
          on_ready: Any = None) -> None:
    """Serve until interrupted (Ctrl-C); `on_ready(url)` once listening."""
    dashboard = Dashboard(mesh, prometheus)

    async def started(_: web.Application) -> None:
        if on_ready is not None:
            on_ready(f"http://127.0.0.1:{port}/")

    app = dashboard.app()
    app.on_startup.append(started)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)

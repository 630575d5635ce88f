"""The node agent's 15020 endpoint: Prometheus metrics, readiness and a status document.

Served inside the node's network namespace on the node's host IP, as a real node's
agent serves on its host network; `ambientctl` reaches it there.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

StatusProvider = Callable[[], dict[str, Any]]


def build_app(metrics_text: Callable[[], bytes], status: StatusProvider,
              ready: Callable[[], bool]) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics_text(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok = ready()
        return web.Response(status=200 if ok else 503, text="ready\n" if ok else "not ready\n")

    async def status_doc(_: web.Request) -> web.Response:
        return web.json_response(status(), dumps=_dumps)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/stats/prometheus", metrics)
    app.router.add_get("/healthz/ready", healthz)
    app.router.add_get("/status", status_doc)
    return app


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, default=str)


async def serve(app: web.Application, sock: socket.socket) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner

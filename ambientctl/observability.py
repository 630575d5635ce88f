"""A real Prometheus for the local mesh (`ambientctl up --observability`).

The proxies serve /metrics inside network namespaces (node agents on their node's
host IP, waypoints on their pod IP) that the root namespace has no route to, so a
Prometheus on 127.0.0.1 cannot reach them by itself. As the Kubernetes API server's
`/api/v1/nodes/NAME/proxy/metrics` does, a small **scrape gateway** in the root
namespace forwards each scrape into the right namespace, unchanged:

    GET /targets                       Prometheus HTTP service discovery: controller,
                                       every node agent, every waypoint (re-read from
                                       the controller on each call, so new waypoints
                                       are scraped without a restart)
    GET /scrape/controller             the controller's /metrics (admin API)
    GET /scrape/node/NODE              node agent NODE's /metrics
    GET /scrape/waypoint/NS/NAME       waypoint NS/NAME's /metrics

Debian's `prometheus` then scrapes the gateway every 5 s with the generated config
below; its data lives under the mesh's state directory, so `ambientctl down` stops
both processes (they are in the mesh's process table) and removes the data.

Run the gateway alone: `python -m ambientctl.observability --state /run/ambientmesh/NAME --port P`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import structlog
import yaml
from aiohttp import web

from ambientctl.agents import Endpoint, get_text
from ambientctl.context import MeshContext
from ambientctl.errors import AmbientctlError
from ambientctl.layout import AGENT_PORT, MeshLayout

DEFAULT_PROMETHEUS_PORT = 15090  # not 9090: Debian starts its own prometheus.service there
DEFAULT_GATEWAY_PORT = 15091
SCRAPE_INTERVAL = "5s"
PROMETHEUS = "prometheus"
GATEWAY = "metrics-gateway"
JOB = "ambient-mesh"


def prometheus_dir(mesh: MeshContext) -> Path:
    return mesh.layout.base / "prometheus"


def prometheus_url(mesh: MeshContext) -> str | None:
    """The Prometheus `up --observability` started for this mesh, if any."""
    settings = mesh.settings
    if settings is None:
        return None
    url = settings.extra.get("prometheus")
    return str(url) if url else None


def render_config(gateway_port: int) -> dict[str, Any]:
    """prometheus.yml: one job, targets from the gateway's HTTP service discovery.
    `instance` is the component (controller, node-1, waypoint/demo/waypoint), as in
    `ambientctl metrics`."""
    gateway = f"127.0.0.1:{gateway_port}"
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [{
            "job_name": JOB,
            "scrape_timeout": "4s",
            "http_sd_configs": [{"url": f"http://{gateway}/targets",
                                 "refresh_interval": SCRAPE_INTERVAL}],
        }],
    }


# ---- the gateway -------------------------------------------------------------------
log = structlog.get_logger("ambientctl.observability")


class UnknownTarget(Exception):
    """A scrape of something that is not one of this mesh's proxies."""


class ScrapeGateway:
    """Forwards scrapes from the root namespace into the proxies' namespaces."""

    def __init__(self, mesh: MeshContext, port: int) -> None:
        self.mesh = mesh
        self.port = port
        self.refused = 0  # scrapes of targets that are not this mesh's proxies

    def _waypoints(self) -> list[str]:
        try:
            with self.mesh.admin(timeout=3) as admin:
                return [str(w["name"]) for w in admin.status().get("waypoints", [])]
        except AmbientctlError:
            return []  # the controller is down: its own target reports that

    def targets(self) -> list[dict[str, Any]]:
        settings = self.mesh.require_settings()
        here = f"127.0.0.1:{self.port}"
        out = [_target(here, "/scrape/controller", "controller", "controller")]
        out += [_target(here, f"/scrape/node/{n}", n, "nodeagent") for n in settings.nodes]
        out += [_target(here, f"/scrape/waypoint/{w}", f"waypoint/{w}", "waypoint")
                for w in self._waypoints()]
        return out

    def scrape(self, kind: str, name: str) -> str:
        """The target's exposition; NetnsHTTPError/AmbientctlError when unreachable.

        Only the mesh's own proxies are reachable through here: a node of this mesh,
        or a waypoint the controller lists. The gateway runs as root and can enter
        any namespace; without this check any local user could reach port 15020 of
        any pod (outside the mesh it is just an app port) through it."""
        if kind == "controller":
            with self.mesh.admin(timeout=4) as admin:
                return admin.metrics()
        settings = self.mesh.require_settings()
        runtime = self.mesh.runtime("metrics-gateway")
        if kind == "node":
            node = next((n for n in runtime.list_nodes() if n.name == name), None)
            if name not in settings.nodes or node is None:
                raise UnknownTarget(f"node {name} is not a node of mesh {self.mesh.cluster}")
            return get_text(self.mesh.agent_endpoint(node), "/metrics", 4)
        if name not in self._waypoints():
            raise UnknownTarget(f"{name} is not a waypoint the controller knows")
        ns, _, wp = name.partition("/")
        pod = runtime.get_pod(ns, wp)
        return get_text(Endpoint(pod.netns, str(pod.ip), AGENT_PORT), "/metrics", 4)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/targets", self._targets)
        app.router.add_get("/scrape/controller", self._scrape)
        app.router.add_get("/scrape/node/{name}", self._scrape)
        app.router.add_get("/scrape/waypoint/{ns}/{name}", self._scrape)
        app.router.add_get("/healthz", lambda _: _ok())
        return app

    async def _targets(self, _: web.Request) -> web.Response:
        try:
            return web.json_response(await asyncio.to_thread(self.targets))
        except AmbientctlError as e:
            return web.json_response({"error": e.message}, status=503)

    async def _scrape(self, request: web.Request) -> web.Response:
        path = request.path.split("/")
        kind = path[2]
        name = "/".join(path[3:])
        try:
            text = await asyncio.to_thread(self.scrape, kind, name)
        except UnknownTarget as e:
            self.refused += 1
            log.warning("scrape refused", target=f"{kind}/{name}", reason=str(e),
                        refused_total=self.refused)
            return web.Response(status=404, text=f"{e}\n")
        except Exception as e:  # a scrape failure is Prometheus' `up == 0`, not a crash
            return web.Response(status=502, text=f"{kind} {name}: "
                                f"{getattr(e, 'message', None) or e}\n")
        return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def _ok() -> web.Response:
    return web.Response(text="ok\n")


def _target(gateway: str, path: str, instance: str, component: str) -> dict[str, Any]:
    return {"targets": [gateway],
            "labels": {"__metrics_path__": path, "instance": instance,
                       "component": component}}


# ---- starting it with the mesh -------------------------------------------------------
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise AmbientctlError("the `prometheus` program is not installed",
                              "run `bash scripts/setup.sh` (installs Debian's prometheus) "
                              "or `apt-get install prometheus`")
    return found


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start(mesh: MeshContext, prometheus_port: int, gateway_port: int,
          step: Callable[[str], None] = lambda _: None, timeout: float = 60.0) -> str:
    """Start the scrape gateway and Prometheus (idempotent: running ones are kept);
    return Prometheus' URL, also saved in the mesh's settings for `dashboard`."""
    from ambientctl.localmesh import port_free, process_env, wait_until

    settings = mesh.require_settings()
    procs = mesh.processes
    binary = prometheus_binary()
    url = f"http://127.0.0.1:{prometheus_port}"
    data = prometheus_dir(mesh)
    data.mkdir(parents=True, exist_ok=True)
    if not procs.alive(GATEWAY):
        if not port_free(gateway_port):
            raise AmbientctlError(f"port 127.0.0.1:{gateway_port} is already in use",
                                  "pick another with --metrics-gateway-port")
        step(f"scrape gateway on 127.0.0.1:{gateway_port}")
        procs.start(GATEWAY, [sys.executable, "-m", "ambientctl.observability",
                              "--state", f"{mesh.layout.base}/", "--port", str(gateway_port)],
                    process_env())
    if not procs.alive(PROMETHEUS):
        if not port_free(prometheus_port):
            raise AmbientctlError(f"port 127.0.0.1:{prometheus_port} is already in use",
                                  "pick another with --prometheus-port")
        config = data / "prometheus.yml"
        config.write_text(yaml.safe_dump(render_config(gateway_port), sort_keys=False))
        step(f"Prometheus on {url}")
        procs.start(PROMETHEUS, [
            binary, f"--config.file={config}", f"--storage.tsdb.path={data / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
            "--storage.tsdb.retention.time=6h", "--web.enable-lifecycle"])

    def dead() -> str | None:
        for c in (GATEWAY, PROMETHEUS):
            if not procs.alive(c):
                return f"{c} exited; see {mesh.layout.log_file(c)}"
        return None

    def ready() -> str | None:
        if not _http_ok(f"http://127.0.0.1:{gateway_port}/healthz"):
            return "waiting for the scrape gateway"
        if not _http_ok(f"{url}/-/ready"):
            return "waiting for Prometheus to be ready"
        return None

    wait_until(ready, timeout, "Prometheus", dead, str(mesh.layout.log_file(PROMETHEUS)))
    extra = {**settings.extra, "prometheus": url, "metricsGateway": gateway_port}
    mesh.layout.save_settings(dataclasses.replace(settings, extra=extra))
    return url


def wait_scraped(url: str, timeout: float = 30.0) -> None:
    """Until every discovered target has been scraped successfully once."""
    import json

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=2) as r:
                active = json.loads(r.read())["data"]["activeTargets"]
            bad = [t["labels"].get("instance", "?") for t in active if t["health"] != "up"]
            if active and not bad:
                return
            last = f"not up yet: {', '.join(bad) or 'no targets'}"
        time.sleep(0.5)
    raise AmbientctlError(f"Prometheus at {url} has not scraped every target: {last}",
                          "see the metrics-gateway and prometheus logs (`ambientctl logs`)")


@click.command()
@click.option("--state", type=click.Path(path_type=Path), required=True,
              help="The mesh's state directory, /run/ambientmesh/CLUSTER: on the command "
                   "line so `down` finds this process even without its pid file.")
@click.option("--port", type=int, default=DEFAULT_GATEWAY_PORT)
def main(state: Path, port: int) -> None:
    """Run the scrape gateway of one local mesh (started by `up --observability`)."""
    cluster, root = state.name, state.parent
    from ambientctl.cli import quiet_logging

    quiet_logging()
    gateway = ScrapeGateway(MeshContext(MeshLayout(cluster, root)), port)
    web.run_app(gateway.app(), host="127.0.0.1", port=port, print=None,
                handle_signals=True)


if __name__ == "__main__":
    main()

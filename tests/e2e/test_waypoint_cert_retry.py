"""A real `ambient-waypoint` whose first certificate requests are refused (its Gateway
is not there yet, as after a Gateway is deleted and created again) keeps running:
one structured line per refused attempt saying why, no traceback, not ready on
/healthz/ready meanwhile; once the Gateway exists it gets its certificate, its
config, and becomes ready. The controller runs in Kubernetes mode against the fake
API server; the waypoint's token is a pod-bound projected token."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from controller.app import ControllerSettings
from controller.kube.serve import KubeSettings, kubernetes_controller
from tests.e2e import test_k8s_controller as k8s
from tests.e2e.mesh_harness import free_port
from tests.e2e.test_k8s_controller import kube_controller, pod, until
from tests.e2e.waypoint_helpers import stop_process
from tests.fakes.kube_apiserver import FakeApiServer
from tests.fakes.kube_client import api_client
from tests.grpc_loop import quiet_stale_grpc_callbacks  # noqa: F401 (autouse)

pytestmark = pytest.mark.anyio
WAYPOINT = str(Path(sys.executable).with_name("ambient-waypoint"))
# The fixtures: a fake API server with a populated cluster, on asyncio.
server, anyio_backend = k8s.server, k8s.anyio_backend


def ready(port: int, path: str = "/healthz/ready") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:  # not listening (yet, or any more)
        return 0, str(e)


def refusals(log: str) -> list[dict[str, object]]:
    out = []
    for line in log.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "certificate refused":
            out.append(event)
    return out


def waypoint_token(server: FakeApiServer, tmp: Path) -> Path:
    """The waypoint's pod (on n2, service account `waypoint`) and a token bound to it."""
    wp = server.create(pod("waypoint-6c-q", "demo", "n2", "10.244.2.50",
                           {"ambientmesh.io/waypoint": "waypoint"}, sa="waypoint"))
    token = tmp / "token"
    token.write_text(server.add_pod_token("wp-token", wp) + "\n")
    return token


def start_waypoint(grpc_port: int, token: Path, metrics: int, stderr: Path
                   ) -> subprocess.Popen[bytes]:
    """A real waypoint process for Gateway demo/waypoint, logging into `stderr`."""
    with open(stderr, "wb") as err:
        return subprocess.Popen(
            [WAYPOINT, "--name", "waypoint", "--namespace", "demo", "--node", "n2",
             "--controller", f"127.0.0.1:{grpc_port}", "--token-file", str(token),
             "--hbone-addr", f"127.0.0.1:{free_port()}",
             "--metrics-addr", f"127.0.0.1:{metrics}", "--access-log", "none"],
            stdout=err, stderr=subprocess.STDOUT)


async def test_refused_first_certificate_is_retried_without_a_traceback(
        server: FakeApiServer, tmp_path: Path) -> None:
    token = waypoint_token(server, tmp_path)
    metrics = free_port()
    stderr = tmp_path / "waypoint.stderr"
    proc: subprocess.Popen[bytes] | None = None
    async with kube_controller(server, tmp_path / "c", manage_waypoints=False) as (c, _):
        try:
            proc = start_waypoint(c.grpc_port, token, metrics, stderr)
            running = proc

            # No Gateway "waypoint" yet: every request is refused, and the process stays.
            await until(lambda: len(refusals(stderr.read_text())) >= 3
                        or running.poll() is not None, 20)
            log = stderr.read_text()
            assert running.poll() is None, f"the waypoint died on a refusal:\n{log}"
            status, body = await asyncio.to_thread(ready, metrics)
            assert status == 503 and "certificate" in body, (status, body)
            # ...but live: the Deployment's liveness probe must not restart it for that.
            assert (await asyncio.to_thread(ready, metrics, "/healthz/live"))[0] == 200
            first = refusals(log)[0]
            assert first["code"] == "PERMISSION_DENIED"
            assert "neither the node agent" in str(first["error"])
            assert float(str(first["retry_in"])) > 0

            server.create({"kind": "Gateway", "apiVersion": "gateway.networking.k8s.io/v1",
                           "metadata": {"name": "waypoint", "namespace": "demo"},
                           "spec": {"gatewayClassName": "ambient-waypoint"}})
            await until(lambda: "certificate issued" in stderr.read_text()
                        or running.poll() is not None, 30)
            assert running.poll() is None, stderr.read_text()

            async def is_ready() -> bool:
                return (await asyncio.to_thread(ready, metrics))[0] == 200
            for _ in range(200):
                if await is_ready():
                    break
                await asyncio.sleep(0.05)
            assert await is_ready(), stderr.read_text()
            log = stderr.read_text()
            assert "Traceback" not in log, log
            assert all(line.startswith("{") for line in log.splitlines() if line.strip()), \
                "every log line is one structured (JSON) event"
        finally:
            if proc is not None:
                await asyncio.to_thread(stop_process, proc)


async def test_expired_certificate_whose_renewal_is_refused_makes_it_not_ready(
        server: FakeApiServer, tmp_path: Path) -> None:
    """3 s certificates: renewed after 5 s (the floor). While renewals are refused (its
    Gateway deleted) the certificate expires: the waypoint says so on /healthz/ready
    (503) and keeps asking; a Gateway again, a certificate again, ready again."""
    gateway = {"kind": "Gateway", "apiVersion": "gateway.networking.k8s.io/v1",
               "metadata": {"name": "waypoint", "namespace": "demo"},
               "spec": {"gatewayClassName": "ambient-waypoint"}}
    server.create(gateway)
    token = waypoint_token(server, tmp_path)
    metrics = free_port()
    stderr = tmp_path / "waypoint.stderr"
    proc: subprocess.Popen[bytes] | None = None
    settings = ControllerSettings(config_dir=tmp_path / "c" / "config", state_dir=tmp_path / "c",
                                  grpc_addr="127.0.0.1:0", admin_addr="127.0.0.1:0",
                                  debounce=0.02, cert_ttl=3)
    api = api_client(server)
    try:
        async with kubernetes_controller(settings, KubeSettings(
                manage_waypoints=False, token_cache_seconds=0), api=api) as (c, _):
            proc = start_waypoint(c.grpc_port, token, metrics, stderr)
            running = proc

            async def status() -> tuple[int, str]:
                return await asyncio.to_thread(ready, metrics)

            async def until_status(code: int, timeout: float) -> str:
                for _ in range(int(timeout / 0.1)):
                    got, body = await status()
                    if got == code or running.poll() is not None:
                        break
                    await asyncio.sleep(0.1)
                assert running.poll() is None, stderr.read_text()
                got, body = await status()
                assert got == code, (got, body, stderr.read_text())
                return body

            await until_status(200, 15)
            server.delete("Gateway", "demo", "waypoint")
            body = await until_status(503, 20)
            assert "expired" in body, body
            assert "renewal failed" in stderr.read_text()
            server.create(gateway)
            await until_status(200, 40)
            log = stderr.read_text()
            assert "Traceback" not in log, log
    finally:
        if proc is not None:
            await asyncio.to_thread(stop_process, proc)
        await api.close()

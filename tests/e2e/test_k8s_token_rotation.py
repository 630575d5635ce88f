"""Projected service-account tokens rotate (the kubelet rewrites the file at 80 % of
their lifetime): every CSR and every (re)subscription to the controller must carry the
token the file holds now. The controller runs in Kubernetes mode against the fake API
server with its TokenReview cache off, and the fake forgets the old token on rotation,
so a proxy still sending the old one is refused."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import grpc.aio
import pytest

from controller.app import Controller, ControllerSettings
from controller.kube.serve import KubeSettings, kubernetes_controller
from controller.kube.source import KubeSource
from mesh.api import config_pb2 as pb
from mesh.identity.ca_client import CertificateClient
from mesh.identity.errors import CertificateRefusedError
from mesh.identity.token_source import TokenFile
from mesh.xds import Backoff, ConfigSubscriber
from tests.e2e import test_k8s_controller as k8s
from tests.e2e.test_k8s_controller import csr_for, nodeagent_token, pod, until
from tests.fakes.kube_apiserver import FakeApiServer
from tests.fakes.kube_client import api_client
from tests.grpc_loop import quiet_stale_grpc_callbacks  # noqa: F401 (autouse)

pytestmark = pytest.mark.anyio
WAYPOINT = str(Path(sys.executable).with_name("ambient-waypoint"))
server = k8s.server  # the fixture: a fake API server with a populated cluster


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def controller(server: FakeApiServer, state: Path, cert_ttl: float | None = None
                     ) -> AsyncIterator[tuple[Controller, KubeSource]]:
    settings = ControllerSettings(config_dir=state / "config", state_dir=state,
                                  grpc_addr="127.0.0.1:0", admin_addr="127.0.0.1:0",
                                  debounce=0.02, cert_ttl=cert_ttl)
    api = api_client(server)
    try:
        async with kubernetes_controller(settings, KubeSettings(
                manage_waypoints=False, token_cache_seconds=0), api=api) as running:
            yield running
    finally:
        await api.close()


def rotate(server: FakeApiServer, file: Path, old: str, new: str) -> None:
    """What the kubelet does (a new token in the file), and the old one expiring."""
    server.reviews[new] = server.reviews.pop(old)
    file.write_text(new + "\n")


async def test_every_csr_carries_the_token_the_file_holds_now(
        server: FakeApiServer, tmp_path: Path) -> None:
    async with controller(server, tmp_path / "c") as (c, _):
        old = nodeagent_token(server, "ambient-nodeagent-a", "sa-token-v1")
        file = tmp_path / "token"
        file.write_text(old + "\n")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as channel:
            rotating = CertificateClient(channel, "n1", TokenFile(file))
            stale = CertificateClient(channel, "n1", old)  # what reading once would do
            csr = await csr_for("demo", "web")
            await rotating.create_certificate(csr, "demo", "web-1")
            await stale.create_certificate(csr, "demo", "web-1")
            assert server.reviewed[-2:] == [old, old]

            rotate(server, file, old, "sa-token-v2")
            issued = await rotating.create_certificate(csr, "demo", "web-1")
            assert str(issued.identity) == "spiffe://cluster.local/ns/demo/sa/web"
            assert server.reviewed[-1] == "sa-token-v2"
            with pytest.raises(CertificateRefusedError) as refused:
                await stale.create_certificate(csr, "demo", "web-1")
            assert refused.value.code == "UNAUTHENTICATED"
            assert server.reviewed[-1] == old


async def test_subscriber_reconnects_with_the_rotated_token(
        server: FakeApiServer, tmp_path: Path) -> None:
    async with controller(server, tmp_path / "c") as (c, _):
        nodeagent_token(server, "ambient-nodeagent-a", "sa-token-v1")
        file = tmp_path / "token"
        file.write_text("expired-token\n")  # what the file held before the kubelet rotated
        sub = ConfigSubscriber(f"127.0.0.1:{c.grpc_port}", kind=pb.NODE, name="n1", node="n1",
                               token=TokenFile(file), apply=lambda s: None,
                               backoff=Backoff(initial=0.05, maximum=0.1))
        async with anyio.create_task_group() as tg:
            tg.start_soon(sub.run)
            await until(lambda: "UNAUTHENTICATED" in sub.last_error)
            assert not sub.connected and sub.snapshot is None
            file.write_text("sa-token-v1\n")
            snap = await sub.wait_for(lambda s: True, timeout=5)
            assert "web-1" in {p.name for p in snap.pods_to_run}
            assert sub.connects == 1 and "sa-token-v1" in server.reviewed
            tg.cancel_scope.cancel()


async def test_waypoint_process_renews_with_the_rotated_token(
        server: FakeApiServer, tmp_path: Path) -> None:
    """The real ambient-waypoint: its first certificate with the first token, its
    renewal (6 s certificates: renewed after 5 s) with the second."""
    server.create({"kind": "Gateway", "apiVersion": "gateway.networking.k8s.io/v1",
                   "metadata": {"name": "waypoint", "namespace": "demo"},
                   "spec": {"gatewayClassName": "ambient-waypoint"}})
    wp = server.create(pod("waypoint-abc", "demo", "n2", "10.244.2.50",
                           {"ambientmesh.io/waypoint": "waypoint"}, sa="waypoint"))
    server.add_pod_token("wp-token-v1", wp)
    file = tmp_path / "token"
    file.write_text("wp-token-v1\n")
    stderr = tmp_path / "waypoint.stderr"
    proc: subprocess.Popen[bytes] | None = None
    async with controller(server, tmp_path / "c", cert_ttl=6) as (c, _):
        try:
            with open(stderr, "wb") as err:
                proc = subprocess.Popen(
                    [WAYPOINT, "--name", "waypoint", "--namespace", "demo", "--node", "n2",
                     "--controller", f"127.0.0.1:{c.grpc_port}",
                     "--token-file", str(file), "--hbone-addr", "127.0.0.1:0",
                     "--metrics-addr", "", "--access-log", "none"],
                    stdout=err, stderr=subprocess.STDOUT)

            def issued() -> int:
                return stderr.read_text().count("certificate issued")

            await until(lambda: issued() == 1 or proc.poll() is not None, 15)
            assert proc.poll() is None, stderr.read_text()
            await until(lambda: ("waypoint", "demo") in {
                (r.name, r.namespace) for r in c.push.records.values()}, 10)
            rotate(server, file, "wp-token-v1", "wp-token-v2")
            await until(lambda: issued() == 2 or proc.poll() is not None, 15)
            log = stderr.read_text()
            assert proc.poll() is None, log
            assert "renewal failed" not in log
            assert "wp-token-v2" in server.reviewed
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    await asyncio.to_thread(proc.wait, 5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

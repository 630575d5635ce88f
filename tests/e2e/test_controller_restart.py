"""A real `ambient-controller` process: killed (SIGKILL), its subscribers keep their
last snapshot; restarted, they reconnect (backoff + jitter) and converge to its version,
and pods keep their nodes, UIDs and VIPs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from mesh.api import config_pb2 as pb
from mesh.identity.node_token import derive_node_token
from mesh.xds import Backoff, ConfigSubscriber
from tests.e2e.mesh_harness import free_port
from tests.grpc_loop import quiet_stale_grpc_callbacks  # noqa: F401 (autouse)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ControllerProcess:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.grpc_port, self.admin_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.tmp / "controller.log", "ab")  # noqa: SIM115 (owned by the process)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.main", "--config-dir", str(self.tmp / "cfg"),
             "--state-dir", str(self.tmp / "state"),
             "--grpc-addr", f"127.0.0.1:{self.grpc_port}",
             "--admin-addr", f"127.0.0.1:{self.admin_port}", "--debounce", "0.02"],
            stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url("/v1/status"), timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError((self.tmp / "controller.log").read_text()[-2000:])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def admin_token(self) -> str:
        return (self.tmp / "state" / "admin.token").read_text().strip()

    def secret(self) -> bytes:
        return (self.tmp / "state" / "node-token.secret").read_bytes()


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProcess]:
    c = ControllerProcess(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.kill()


async def status(c: ControllerProcess) -> Any:
    async with httpx.AsyncClient(timeout=5) as http:
        return (await http.get(c.url("/v1/status"))).json()


async def test_kill_keeps_snapshots_restart_converges(controller: ControllerProcess) -> None:
    secret = controller.secret()
    subs = [ConfigSubscriber(
        f"127.0.0.1:{controller.grpc_port}", kind=pb.NODE, name=n, node=n,
        token=derive_node_token(secret, n), apply=lambda s: None, pod_cidrs=[cidr],
        backoff=Backoff(initial=0.05, maximum=0.3, jitter=0.5))
        for n, cidr in (("node-1", "10.244.1.0/24"), ("node-2", "10.244.2.0/24"))]
    async with anyio.create_task_group() as tg:
        for s in subs:
            tg.start_soon(s.run)
        with anyio.fail_after(10):
            while not all(s.snapshot is not None for s in subs):
                await anyio.sleep(0.05)
        headers = {"Authorization": f"Bearer {controller.admin_token()}"}
        async with httpx.AsyncClient(timeout=5, headers=headers) as http:
            for f in sorted(EXAMPLES.glob("*.yaml")):
                r = await http.post(controller.url("/v1/apply"),
                                    json={"yaml": f.read_text(), "file": f.name})
                assert r.status_code == 200, r.text
        # Both nodes registered: the four pods are spread two and two.
        with anyio.fail_after(10):
            while True:
                snaps = [s.snapshot for s in subs]
                if all(x is not None and len(x.pods_to_run) == 2 for x in snaps):
                    break
                await anyio.sleep(0.05)
        before = {s.name: s.snapshot for s in subs}
        uids = {s.name: sorted(p.uid for p in before[s.name].pods_to_run)  # type: ignore[union-attr]
                for s in subs}

        vips_before = {x.name: list(x.vips) for x in before["node-1"].services}  # type: ignore[union-attr]
        controller.kill()
        with anyio.fail_after(5):
            while any(s.connected for s in subs):
                await anyio.sleep(0.05)
        await anyio.sleep(1.0)  # several reconnect attempts fail meanwhile
        for s in subs:
            assert s.snapshot is before[s.name], "last good snapshot must be kept"
            assert s.last_error

        # Changed while the controller was down: the restarted one has a new version.
        extra = controller.tmp / "cfg" / "extra.yaml"
        extra.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: "
                         "demo}\nspec: {selector: {app: sleep}, ports: [{port: 7}]}\n")
        t0 = time.monotonic()
        controller.start()
        with anyio.fail_after(10):
            while True:
                st = await status(controller)
                proxies = st["proxies"]
                if len(proxies) == 2 and all(p["connected"] and p["inSync"] for p in proxies):
                    break
                await anyio.sleep(0.05)
        converged = time.monotonic() - t0
        for s in subs:
            snap = s.snapshot
            assert snap is not None and snap.version != before[s.name].version  # type: ignore[union-attr]
            assert any(x.name == "extra" for x in snap.services)
            # Placement, UIDs and VIPs survived the restart.
            assert sorted(p.uid for p in snap.pods_to_run) == uids[s.name]
            vips = {x.name: list(x.vips) for x in snap.services}
            assert vips["catalog"] == vips_before["catalog"]
            assert vips["legacy-db"] == vips_before["legacy-db"]
            assert s.connects == 2
        assert converged < 10
        tg.cancel_scope.cancel()

"""TrafficPolicy rateLimit.perSourceIdentity end to end, with real caller identities:
YAML applied to a real controller (admin API) -> WAYPOINT snapshot pushed over gRPC
to the real `ambient-waypoint` process (mesh mode: certificate from the controller's
CA, HBONE on loopback) -> two workloads with their own CA-issued certificates call it
through HBONE tunnels. Each caller has its own bucket: one exhausting its share does
not take the other's."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import grpc.aio
import httpx
import pytest

from controller.app import Controller, ControllerSettings
from mesh.api import config_pb2 as pb
from mesh.hbone import HboneClientPool, StaticTls
from mesh.identity import tls
from mesh.identity.ca_client import CertificateClient
from mesh.identity.csr import build_csr, generate_key
from mesh.identity.node_token import derive_node_token
from mesh.identity.spiffe import SpiffeId
from mesh.identity.svid import CertifiedKey, load_pem_chain
from mesh.xds import Backoff, ConfigSubscriber
from tests.e2e.test_waypoint_hbone import http_get
from tests.e2e.waypoint_helpers import (
    WAYPOINT,
    Backend,
    BackendLoop,
    answer_name,
    free_port,
    stop_process,
)
from tests.grpc_loop import quiet_stale_grpc_callbacks  # noqa: F401 (autouse)

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

NODE = "node-a"
WAYPOINT_ID = SpiffeId.for_workload("default", "waypoint")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def config(backend_port: int) -> str:
    callers = [f"""
apiVersion: v1
kind: Pod
metadata: {{name: {sa}, namespace: default}}
spec:
  serviceAccountName: {sa}
  nodeName: {NODE}
  containers: [{{name: main, command: [sleep, infinity]}}]
""" for sa in ("alice", "bob")]
    return "\n---\n".join([*callers, """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: ambient-waypoint}
""", """
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  labels: {ambientmesh.io/use-waypoint: waypoint}
spec:
  ports: [{name: http, port: 80}]
""", f"""
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{{addresses: ["127.0.0.1"]}}]
ports: [{{name: http, port: {backend_port}}}]
""", """
apiVersion: ambientmesh.io/v1alpha1
kind: TrafficPolicy
metadata: {name: per-caller, namespace: default}
spec:
  targetRefs: [{kind: Service, name: web}]
  rateLimit:
    requestsPerUnit: 3
    unit: minute
    perSourceIdentity: true
"""])


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    c = Controller(ControllerSettings(
        config_dir=tmp_path / "config", state_dir=tmp_path / "state",
        grpc_addr="127.0.0.1:0", admin_addr="127.0.0.1:0", debounce=0.02))
    async with c.running():
        yield c


async def certificate(channel: grpc.aio.Channel, token: str, pod: str
                      ) -> tuple[SpiffeId, StaticTls]:
    key = generate_key()
    sid = SpiffeId.for_workload("default", pod)
    signed = await CertificateClient(channel, NODE, token).create_certificate(
        build_csr(key, sid), "default", pod)
    ck = CertifiedKey(key, load_pem_chain(signed.chain_pem))
    return signed.identity, StaticTls(str(signed.identity),
                                      tls.client_context(ck, signed.bundle))


async def wait_until(what: str, check: Callable[[], Awaitable[bool]],
                     timeout: float = 20.0) -> None:
    try:
        with anyio.fail_after(timeout):
            while True:
                try:
                    if await check():
                        return
                except (httpx.HTTPError, OSError):
                    pass
                await anyio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def test_each_caller_identity_has_its_own_bucket(controller: Controller,
                                                       tmp_path: Path) -> None:
    backends = BackendLoop()
    proc: subprocess.Popen[bytes] | None = None
    pool = HboneClientPool()
    token = derive_node_token(controller.secret, NODE)
    target = f"127.0.0.1:{controller.grpc_port}"
    node = ConfigSubscriber(target, kind=pb.NODE, name=NODE, node=NODE, token=token,
                            pod_cidrs=["10.244.1.0/24"], apply=lambda s: None,
                            backoff=Backoff(initial=0.05, maximum=0.2))
    try:
        web = backends.add(Backend("web"), answer_name)
        async with anyio.create_task_group() as tg:
            tg.start_soon(node.run)
            await node.wait_for(lambda s: True, timeout=10)  # the node is registered
            async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{controller.admin_port}", timeout=10,
                    headers={"Authorization": f"Bearer {controller.admin_token}"}) as admin:
                r = await admin.post("/v1/apply", json={"yaml": config(web.port),
                                                        "file": "l7.yaml"})
                assert r.status_code == 200, r.text
            snap = await node.wait_for(
                lambda s: {"alice", "bob", "waypoint"} <= {p.name for p in s.pods_to_run},
                timeout=10)
            vip = next(s.vips[0] for s in snap.services if s.name == "web")

            token_file = tmp_path / "node.token"
            token_file.write_text(token)
            hbone_port, admin_port = free_port(), free_port()
            stderr = tmp_path / "waypoint.stderr"
            with open(stderr, "wb") as err:
                proc = subprocess.Popen(
                    [WAYPOINT, "--name", "waypoint", "--namespace", "default",
                     "--controller", target, "--node", NODE, "--token-file", str(token_file),
                     "--hbone-addr", f"127.0.0.1:{hbone_port}",
                     "--metrics-addr", f"127.0.0.1:{admin_port}", "--access-log", "none",
                     "--log-level", "warning"],
                    stdout=subprocess.DEVNULL, stderr=err)

            async def configured() -> bool:
                assert proc is not None
                if proc.poll() is not None:
                    raise AssertionError(f"waypoint exited: {stderr.read_text()}")
                async with httpx.AsyncClient(timeout=2) as http:
                    dump = (await http.get(f"http://127.0.0.1:{admin_port}/config_dump")).json()
                return bool(dump["trafficPolicies"].get("default/web") == "default/per-caller")

            await wait_until("the waypoint got the TrafficPolicy", configured)

            async with grpc.aio.insecure_channel(target) as channel:
                callers = {name: await certificate(channel, token, name)
                           for name in ("alice", "bob")}
            statuses: dict[str, list[int]] = {}
            for name, (sid, source) in callers.items():
                assert sid == SpiffeId.for_workload("default", name)
                stream = await pool.connect(source, ("127.0.0.1", hbone_port), f"{vip}:80",
                                            expected_peer=WAYPOINT_ID)
                statuses[name] = []
                for _ in range(5):
                    resp = await http_get(stream, "/")
                    statuses[name].append(resp.status)
                    if resp.status == 200:
                        assert resp.body == b"web"
                await stream.aclose()
            # 3 per minute each: alice's 429s leave bob's bucket full.
            assert statuses == {"alice": [200, 200, 200, 429, 429],
                                "bob": [200, 200, 200, 429, 429]}
            assert sum(web.hits.values()) == 6
            async with httpx.AsyncClient(timeout=5) as http:
                metrics = (await http.get(f"http://127.0.0.1:{admin_port}/metrics")).text
            limited = [line for line in metrics.splitlines()
                       if line.startswith("istio_requests_total{")
                       and 'response_code="429"' in line]
            for sid, _ in callers.values():  # each refusal is reported with its caller
                assert any(f'source_principal="{sid.uri}"' in line for line in limited)
            tg.cancel_scope.cancel()
    finally:
        await pool.aclose()
        if proc is not None:
            stop_process(proc)
        backends.close()

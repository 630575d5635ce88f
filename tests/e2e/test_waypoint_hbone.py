"""The waypoint inside the mesh: a client workload reaches it through a real HBONE
tunnel (mutual TLS 1.3 with certificates from mesh/identity's CA) addressed to the
service VIP; the waypoint authorizes by the tunnel's peer identity, then forwards
over HBONE with its own certificate to the destination's HBONE server (the node
proxy's inbound role), which relays to the app."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httptools
import pytest

from mesh.api import config_pb2 as pb
from mesh.hbone import HboneClientPool, HboneRequest, HboneServer, StaticTls
from mesh.identity import tls
from mesh.identity.bundle import TrustBundle
from mesh.identity.spiffe import SpiffeId
from mesh.identity.svid import CertifiedKey
from tests.e2e.waypoint_helpers import Backend, BackendLoop, answer_name, waypoint_snapshot
from tests.hbone_helpers import listen, relay_handler
from tests.identity_helpers import mint, new_ca
from waypoint.config import build
from waypoint.server import HboneDialer, HboneListen, WaypointServer
from waypoint.state import WaypointState

pytestmark = pytest.mark.e2e

SLEEP = SpiffeId.for_workload("default", "sleep")
OTHER = SpiffeId.for_workload("other", "app")
WAYPOINT = SpiffeId.for_workload("default", "waypoint")
WEB = SpiffeId.for_workload("default", "web")
VIP = "10.96.0.10"


@dataclass
class Response:
    status: int
    body: bytes


class _Parser:
    def __init__(self) -> None:
        self.body = b""
        self.done = False

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.done = True


async def http_get(stream: anyio.abc.ByteStream, path: str) -> Response:
    await stream.send(f"GET {path} HTTP/1.1\r\nHost: web.default.svc.cluster.local\r\n\r\n"
                      .encode())
    p = _Parser()
    parser = httptools.HttpResponseParser(p)
    while not p.done:
        parser.feed_data(await stream.receive())
    return Response(parser.get_status_code(), p.body)


def snapshot(backend_port: int) -> pb.Snapshot:
    web = pb.Service(
        namespace="default", name="web", hostnames=["web.default.svc.cluster.local"],
        vips=[VIP], ports=[pb.ServicePort(name="http", port=80, target_port=backend_port)],
        endpoints=[pb.Endpoint(workload_uid="web-1", addresses=["127.0.0.1"], enrolled=True,
                               identity=WEB.uri,
                               ports=[pb.EndpointPort(service_port=80,
                                                      target_port=backend_port)])])
    allow_sleep = pb.Authorization(
        namespace="default", name="only-sleep", action=pb.ALLOW,
        targets=[pb.PolicyTarget(kind="Service", namespace="default", name="web")],
        rules=[pb.Rule(sources=[pb.Source(principals=["cluster.local/ns/default/sa/sleep"])])])
    snap = waypoint_snapshot([web], [], [], [], [allow_sleep])
    snap.workloads.append(pb.Workload(uid="web-1", namespace="default", name="web-7d9f",
                                      labels={"app": "web"}, identity=WEB.uri))
    return snap


@pytest.fixture
def backend_port() -> Iterator[int]:
    loop = BackendLoop()
    try:
        yield loop.add(Backend("web"), answer_name).port
    finally:
        loop.close()


Certs = dict[SpiffeId, tuple[CertifiedKey, TrustBundle]]


def workload_tls(certs: Certs, sid: SpiffeId) -> StaticTls:
    """The client side of mutual TLS as workload `sid` (its certificate from `certs`)."""
    ck, bundle = certs[sid]
    return StaticTls(str(sid), tls.client_context(ck, bundle))


@dataclass
class HboneWaypoint:
    """A waypoint reached through real HBONE tunnels: `connect` opens a tunnel from a
    workload identity to the service VIP, as the source node proxy does."""

    server: WaypointServer
    address: tuple[str, int]
    pool: HboneClientPool
    certs: Certs

    async def connect(self, sid: SpiffeId, expected_peer: SpiffeId | None = None
                      ) -> anyio.abc.ByteStream:
        return await self.pool.connect(workload_tls(self.certs, sid), self.address, f"{VIP}:80",
                                       expected_peer=expected_peer)


@contextlib.asynccontextmanager
async def hbone_waypoint(tmp: Path, state: WaypointState,
                         seen: list[HboneRequest] | None = None
                         ) -> AsyncIterator[HboneWaypoint]:
    """The waypoint serving `state` behind HBONE (its own certificate from a fresh CA),
    forwarding over HBONE to a destination HBONE server (the node proxy's inbound
    role, recording each request in `seen`) that relays to the app."""
    ca = new_ca(tmp / "ca")
    certs = {sid: mint(ca, sid) for sid in (SLEEP, OTHER, WAYPOINT, WEB)}

    def server_ctx(sid: SpiffeId) -> Callable[[], ssl.SSLContext]:
        ck, bundle = certs[sid]
        ctx = tls.server_context(ck, bundle)
        return lambda: ctx

    dest = HboneServer(server_ctx(WEB), relay_handler(seen))
    dest_sock = listen()
    out_pool, in_pool = HboneClientPool(), HboneClientPool()
    server = WaypointServer(state, dial=HboneDialer(out_pool, workload_tls(certs, WAYPOINT),
                                                    port=dest_sock.getsockname()[1]))
    wp_sock = listen()
    wp = HboneWaypoint(server, ("127.0.0.1", wp_sock.getsockname()[1]), in_pool, certs)
    hbone = HboneListen(wp_sock, HboneServer(server_ctx(WAYPOINT), server.handle_hbone))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(dest.serve, dest_sock)
            tg.start_soon(lambda: server.run(hbone=hbone))
            await server.ready.wait()
            yield wp
            tg.cancel_scope.cancel()
    finally:
        await in_pool.aclose()
        await out_pool.aclose()
        for s in (dest_sock, wp_sock):
            s.close()


def test_request_through_hbone_both_ways(tmp_path: Path, backend_port: int) -> None:
    async def main() -> None:
        # Destination node proxy: HBONE in, relay to the app (each request seen).
        seen: list[HboneRequest] = []
        state = WaypointState(build(snapshot(backend_port)))
        async with hbone_waypoint(tmp_path, state, seen) as wp:
            # The allowed caller: two requests on one tunnel (keep-alive).
            stream = await wp.connect(SLEEP, expected_peer=WAYPOINT)
            assert await http_get(stream, "/one") == Response(200, b"web")
            assert await http_get(stream, "/two") == Response(200, b"web")
            await stream.aclose()
            # The destination saw the waypoint's identity, addressed to the pod.
            assert seen and all(r.peer_identity == WAYPOINT for r in seen)
            assert seen[0].authority == f"127.0.0.1:{backend_port}"

            # Another identity is refused by the L7 policy at the waypoint.
            other = await wp.connect(OTHER)
            denied = await http_get(other, "/one")
            assert denied.status == 403 and b"RBAC" in denied.body
            await other.aclose()

            metrics = wp.server.metrics.exposition().decode()
            ok = next(line for line in metrics.splitlines()
                      if line.startswith("istio_requests_total{")
                      and 'response_code="200"' in line)
            assert f'source_principal="{SLEEP.uri}"' in ok
            assert 'source_workload_namespace="default"' in ok
            assert 'connection_security_policy="mutual_tls"' in ok
            assert f'destination_principal="{WEB.uri}"' in ok
            assert 'destination_workload="web"' in ok
            assert f'source_principal="{OTHER.uri}"' in metrics

    anyio.run(main)


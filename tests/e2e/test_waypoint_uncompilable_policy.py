"""A pushed policy the waypoint cannot compile is enforced as a deny-all, for real:
a client reaches the waypoint through an HBONE tunnel (mutual TLS 1.3, certificates
from mesh/identity's CA) and is refused with 403 naming the policy and the field;
the waypoint's metrics and /config_dump show it; the fixed push lets the same client
through. Formerly the waypoint NACKed the whole snapshot and the node proxy skipped
the CIDR (issue 19)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from mesh.api import config_pb2 as pb
from mesh.hbone import HboneClientPool, HboneServer, StaticTls
from mesh.identity import tls
from mesh.identity.spiffe import SpiffeId
from tests.e2e.test_waypoint_hbone import (  # noqa: F401  (backend_port is a fixture)
    SLEEP,
    VIP,
    WAYPOINT,
    WEB,
    backend_port,
    http_get,
    snapshot,
)
from tests.hbone_helpers import listen, relay_handler
from tests.identity_helpers import mint, new_ca
from waypoint.config import build
from waypoint.http1 import DownstreamInfo
from waypoint.messages import EmptyBody, RequestHead
from waypoint.server import HboneDialer, HboneListen, WaypointServer
from waypoint.state import WaypointState

pytestmark = pytest.mark.e2e

BAD_DENY = pb.Authorization(
    namespace="default", name="deny-lab", action=pb.DENY,
    targets=[pb.PolicyTarget(kind="Service", namespace="default", name="web")],
    rules=[pb.Rule(sources=[pb.Source(ip_blocks=["192.0.2.0/24", "10.1.0.0/16x"])])])


BAD_ERROR = ("spec.rules[0].from[0].source.ipBlocks[1]: not an IP address or CIDR: "
             "'10.1.0.0/16x'")


async def config_dump(server: WaypointServer) -> dict[str, object]:
    """What the waypoint's admin port answers on /config_dump."""
    resp = await server._admin(RequestHead("GET", "/config_dump", "", []), EmptyBody(),
                               DownstreamInfo())
    body = b"".join([chunk async for chunk in resp.body.chunks()])
    out: dict[str, object] = json.loads(body)
    return out


def test_uncompilable_policy_denies_over_hbone_until_fixed(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    port: int = request.getfixturevalue("backend_port")

    async def main() -> None:
        ca = new_ca(tmp_path / "ca")
        certs = {sid: mint(ca, sid) for sid in (SLEEP, WAYPOINT, WEB)}

        def client_tls(sid: SpiffeId) -> StaticTls:
            return StaticTls(str(sid), tls.client_context(*certs[sid]))

        def server_ctx(sid: SpiffeId) -> Callable[[], object]:
            ctx = tls.server_context(*certs[sid])
            return lambda: ctx

        bad = snapshot(port)
        bad.authorizations.append(BAD_DENY)
        state = WaypointState(build(bad))  # kept, not refused: routes are fine
        dest, dest_sock = HboneServer(server_ctx(WEB), relay_handler()), listen()  # type: ignore[arg-type]
        out_pool, in_pool = HboneClientPool(), HboneClientPool()
        server = WaypointServer(state, dial=HboneDialer(out_pool, client_tls(WAYPOINT),
                                                        port=dest_sock.getsockname()[1]))
        wp_sock = listen()
        hbone = HboneListen(wp_sock, HboneServer(server_ctx(WAYPOINT),  # type: ignore[arg-type]
                                                 server.handle_hbone))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(dest.serve, dest_sock)
                tg.start_soon(lambda: server.run(hbone=hbone))
                await server.ready.wait()
                wp_addr = ("127.0.0.1", wp_sock.getsockname()[1])

                stream = await in_pool.connect(client_tls(SLEEP), wp_addr, f"{VIP}:80",
                                               expected_peer=WAYPOINT)
                denied = await http_get(stream, "/one")
                assert denied.status == 403, denied
                assert b"default/deny-lab could not be compiled" in denied.body
                assert b"spec.rules[0].from[0].source.ipBlocks[1]" in denied.body
                await stream.aclose()
                metrics = server.metrics.exposition().decode()
                assert 'ambient_authz_uncompilable_policies{policy="default/deny-lab"} 1.0' \
                    in metrics
                assert (await config_dump(server))["uncompilablePolicies"] == {
                    "default/deny-lab": BAD_ERROR}

                state.update(build(snapshot(port)))  # the fixed push
                stream = await in_pool.connect(client_tls(SLEEP), wp_addr, f"{VIP}:80",
                                               expected_peer=WAYPOINT)
                assert (await http_get(stream, "/one")).status == 200
                await stream.aclose()
                tg.cancel_scope.cancel()
        finally:
            await in_pool.aclose()
            await out_pool.aclose()
            for s in (dest_sock, wp_sock):
                s.close()

    anyio.run(main)

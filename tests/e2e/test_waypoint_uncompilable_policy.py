"""A pushed policy the waypoint cannot compile is enforced as a deny-all, for real:
a client reaches the waypoint through an HBONE tunnel (mutual TLS 1.3, certificates
from mesh/identity's CA) and is refused with 403 naming the policy and the field;
the waypoint's metrics and /config_dump show it; the fixed push lets the same client
through. Formerly the waypoint NACKed the whole snapshot and the node proxy skipped
the CIDR (issue 19)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from mesh.api import config_pb2 as pb
from tests.e2e.test_waypoint_hbone import (  # noqa: F401  (backend_port is a fixture)
    SLEEP,
    VIP,
    WAYPOINT,
    backend_port,
    hbone_waypoint,
    http_get,
    snapshot,
)
from waypoint.config import build
from waypoint.http1 import DownstreamInfo
from waypoint.messages import EmptyBody, RequestHead
from waypoint.server import WaypointServer
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
                               DownstreamInfo(peer="127.0.0.1:40000"))
    body = b"".join([chunk async for chunk in resp.body.chunks()])
    out: dict[str, object] = json.loads(body)
    return out


def test_uncompilable_policy_denies_over_hbone_until_fixed(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    port: int = request.getfixturevalue("backend_port")

    async def main() -> None:
        bad = snapshot(port)
        bad.authorizations.append(BAD_DENY)
        state = WaypointState(build(bad))  # kept, not refused: routes are fine
        async with hbone_waypoint(tmp_path, state) as wp:
            stream = await wp.connect(SLEEP, expected_peer=WAYPOINT)
            denied = await http_get(stream, "/one")
            assert denied.status == 403, denied
            assert b"default/deny-lab could not be compiled" in denied.body
            assert b"spec.rules[0].from[0].source.ipBlocks[1]" in denied.body
            await stream.aclose()
            metrics = wp.server.metrics.exposition().decode()
            assert 'ambient_authz_uncompilable_policies{policy="default/deny-lab"} 1.0' \
                in metrics
            assert (await config_dump(wp.server))["uncompilablePolicies"] == {
                "default/deny-lab": BAD_ERROR}

            state.update(build(snapshot(port)))  # the fixed push
            stream = await wp.connect(SLEEP, expected_peer=WAYPOINT)
            assert (await http_get(stream, "/one")).status == 200
            await stream.aclose()

    anyio.run(main)


def test_config_dump_answers_only_on_loopback(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Pods may scrape /metrics and probe health on 15020; the config dump (services,
    policies, identity) answers only the operator on the waypoint's own loopback."""
    port: int = request.getfixturevalue("backend_port")

    async def main() -> None:
        async with hbone_waypoint(tmp_path, WaypointState(build(snapshot(port)))) as wp:
            async def get(path: str, peer: str) -> int:
                resp = await wp.server._admin(RequestHead("GET", path, "", []), EmptyBody(),
                                              DownstreamInfo(peer=peer))
                return resp.status
            for pod in ("10.100.1.3:41000", "fd00:100:1::3:41000", "::ffff:10.1.2.3:5"):
                assert await get("/config_dump", pod) == 403, pod
                assert await get("/metrics", pod) == 200, pod
            for local in ("127.0.0.1:41000", "::1:41000", "::ffff:127.0.0.1:5"):
                assert await get("/config_dump", local) == 200, local

    anyio.run(main)

"""The destination side never lets a waypoint be skipped (DESIGN §7b, issue 20 finding 3).

A workload bound to a waypoint (`ambientmesh.io/use-waypoint` on the pod) takes only
what its waypoint sends: an HBONE peer presenting the waypoint's SPIFFE identity.
Plaintext (PERMISSIVE or not) and any other identity are refused, logged "denied"
with the waypoint named, and counted (cause waypoint_bypassed).

The decision (nodeagent.proxy.delivery.check_waypoint) is tested pure; the two inbound
handlers run on real loopback sockets and a real HBONE server (TLS 1.3, HTTP/2
CONNECT, certificates from a real CA) to show that the app is never reached; explain
tells the same story with the same function."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ambientctl.explain import Explainer, ExplainRequest, Explanation
from ambientctl.refs import parse_destination
from mesh.api import config_pb2 as pb
from mesh.hbone import HboneClientPool, HboneConnectError, HboneServer, StaticTls
from mesh.identity.spiffe import SpiffeId
from nodeagent.accesslog import AccessLog
from nodeagent.metrics import ProxyMetrics
from nodeagent.proxy import delivery
from nodeagent.proxy.handlers import ProxyContext, handle_hbone, handle_inbound_plaintext
from nodeagent.proxy.pod_listeners import PodEndpoint
from nodeagent.proxy.tunnel import Tunnels
from nodeagent.state import ProxyState
from tests.hbone_helpers import hbone_serving, mtls_pair
from tests.identity_helpers import new_ca
from tests.unit.test_ambientctl_explain import WAYPOINT_REF, WORKLOADS, snapshots

POD_IP = "127.0.0.2"  # a loopback address of our own netns: the "pod" the app runs in
CAPTURE_IP = "127.0.0.4"  # where the captured plaintext connection is accepted
CLIENT_IP = "127.0.0.3"  # the client outside the mesh
POD_ID = SpiffeId.for_workload("demo", "web")
WAYPOINT_ID = SpiffeId.for_workload("demo", "waypoint")
INTRUDER_ID = SpiffeId.for_workload("other", "intruder")
POD = PodEndpoint("demo", "web-0", "uid-web", "/proc/self/ns/net", POD_IP, "", str(POD_ID))
BOUND = pb.WaypointRef(namespace="demo", name="waypoint", addresses=["10.100.1.9"],
                       port=15008, identity=str(WAYPOINT_ID))


def bound_workload(waypoint: pb.WaypointRef | None = BOUND) -> pb.Workload:
    wl = pb.Workload(uid="uid-web", namespace="demo", name="web-0", addresses=[POD_IP],
                     enrolled=True, identity=str(POD_ID))
    if waypoint is not None:
        wl.waypoint.CopyFrom(waypoint)
    return wl


def state_with(wl: pb.Workload) -> ProxyState:
    snap = pb.Snapshot(version="v1", workloads=[wl])
    snap.workload_policies.append(pb.WorkloadPolicy(workload_uid=wl.uid,
                                                    mtls_mode=pb.PERMISSIVE))
    return ProxyState.from_snapshot(snap)


class Certs:
    """The destination pod's certificate is held (the CA is not what is tested here)."""

    def certificate_error(self, identity: SpiffeId) -> str | None:
        return None

    def client_tls(self, identity: SpiffeId) -> StaticTls:
        raise AssertionError("inbound handlers open no tunnel")

    def server_context_provider(self, identity: SpiffeId) -> Callable[[], ssl.SSLContext]:
        raise AssertionError("the test runs its own HBONE server")


# ---- the decision ------------------------------------------------------------------

def test_only_the_waypoints_identity_passes() -> None:
    wl = bound_workload()
    delivery.check_waypoint(wl, str(WAYPOINT_ID))
    with pytest.raises(delivery.WaypointBypassed,
                       match=r"bypassed waypoint demo/waypoint: pod demo/web-0 .* plaintext"):
        delivery.check_waypoint(wl, None)
    with pytest.raises(delivery.WaypointBypassed, match=re.escape(
            f"the peer is {INTRUDER_ID}, not the waypoint's")):
        delivery.check_waypoint(wl, str(INTRUDER_ID))
    # The pod's own namespace and service account are no better than anyone else's.
    with pytest.raises(delivery.WaypointBypassed):
        delivery.check_waypoint(wl, str(POD_ID))
    with pytest.raises(delivery.WaypointBypassed):  # prefix / suffix tricks
        delivery.check_waypoint(wl, str(WAYPOINT_ID) + "x")


def test_unbound_workloads_take_anyone() -> None:
    delivery.check_waypoint(bound_workload(None), None)
    delivery.check_waypoint(bound_workload(None), str(INTRUDER_ID))
    delivery.check_waypoint(None, None)  # unknown workload: admission refuses it first


def test_a_binding_to_a_missing_gateway_admits_nobody() -> None:
    """The controller sends the binding with no identity when the Gateway does not
    exist (deleted, typo): nothing can prove to be it, so nothing passes."""
    gone = pb.WaypointRef(namespace="demo", name="waypoint")
    with pytest.raises(delivery.WaypointBypassed, match="no waypoint Gateway"):
        delivery.check_waypoint(bound_workload(gone), str(WAYPOINT_ID))
    with pytest.raises(delivery.WaypointBypassed):
        delivery.check_waypoint(bound_workload(gone), "")


# ---- the handlers, on real sockets -------------------------------------------------

@contextlib.asynccontextmanager
async def app_server() -> AsyncIterator[tuple[int, list[bytes]]]:
    """The pod's app on POD_IP: records what it receives, answers "app answered"."""
    received: list[bytes] = []

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(100))
        writer.write(b"app answered")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(app, POD_IP, 0)
    try:
        yield server.sockets[0].getsockname()[1], received
    finally:
        server.close()
        await server.wait_closed()


def refusals(ctx: ProxyContext) -> dict[str, float]:
    return {f"{s.labels['cause']}/{s.labels['direction']}": s.value
            for m in ctx.metrics.registry.collect() if m.name == "ambient_connections_refused"
            for s in m.samples if s.name.endswith("_total")}


def context(state: ProxyState, out: io.StringIO, app_port: int) -> ProxyContext:
    return ProxyContext(state, ProxyMetrics(), AccessLog(out),
                        Tunnels(Certs()),
                        lambda s: (POD_IP, app_port))


async def plaintext_once(wl: pb.Workload) -> tuple[dict[str, str], list[bytes], bytes,
                                                   dict[str, float]]:
    """A plaintext connection captured from the app's port, handled as on 15006."""
    out = io.StringIO()
    async with app_server() as (app_port, received):
        ctx = context(state_with(wl), out, app_port)
        # The captured socket, as sk_lookup hands it over: its getsockname() is the
        # original destination port (the app's). Accepted on another loopback address
        # with that port, since the app holds POD_IP:app_port; the handler delivers to
        # the pod's address, POD_IP, at that port: the app.
        listener = socket.create_server((CAPTURE_IP, app_port))
        client = socket.create_connection((CAPTURE_IP, app_port),
                                          source_address=(CLIENT_IP, 0))
        accepted, _ = listener.accept()
        accepted.setblocking(False)
        listener.close()
        handler = asyncio.ensure_future(handle_inbound_plaintext(ctx, POD, accepted))
        try:
            client.sendall(b"DELETE /items/1 HTTP/1.1\r\n\r\n")
            client.settimeout(5)
            try:
                got = await asyncio.to_thread(client.recv, 100)
            except ConnectionResetError:
                got = b"<reset>"
        finally:
            client.close()
            await asyncio.wait_for(handler, 5)
    record: dict[str, str] = json.loads(out.getvalue().splitlines()[-1])
    return record, received, got, refusals(ctx)


def test_plaintext_to_a_bound_pod_is_reset_before_the_app() -> None:
    record, received, got, counted = asyncio.run(plaintext_once(bound_workload()))
    assert received == [] and got == b"<reset>", (received, got)
    assert record["outcome"] == "denied", record
    assert "bypassed waypoint demo/waypoint" in record["reason"], record
    assert counted == {"waypoint_bypassed/inbound_plaintext": 1.0}


def test_plaintext_to_an_unbound_permissive_pod_reaches_the_app() -> None:
    """The control: the same connection, the pod not bound, is delivered."""
    record, received, got, counted = asyncio.run(plaintext_once(bound_workload(None)))
    assert received == [b"DELETE /items/1 HTTP/1.1\r\n\r\n"] and got == b"app answered"
    assert record["outcome"] != "denied" and counted == {}


async def hbone_once(wl: pb.Workload, tmp: Path, client_id: SpiffeId
                     ) -> tuple[dict[str, str], list[bytes], str, dict[str, float]]:
    """One CONNECT to the pod's app port through a real HBONE server whose handler is
    the node proxy's handle_hbone, from a client presenting `client_id`."""
    server_ctx, source = mtls_pair(new_ca(tmp / "ca"), POD_ID, client_id)
    out = io.StringIO()
    async with app_server() as (app_port, received):
        ctx = context(state_with(wl), out, app_port)
        server = HboneServer(lambda: server_ctx, lambda req: handle_hbone(ctx, POD, req))
        async with hbone_serving(server) as port:
            pool = HboneClientPool()
            try:
                stream = await pool.connect(source, ("127.0.0.1", port),
                                            f"{POD_IP}:{app_port}", expected_peer=POD_ID)
            except HboneConnectError as e:
                answer = f"refused {e.status}"
            else:
                await stream.send(b"DELETE /items/1 HTTP/1.1\r\n\r\n")
                answer = (await stream.receive()).decode()
                await stream.aclose()
            finally:
                await pool.aclose()
        await asyncio.sleep(0.05)
    record: dict[str, str] = json.loads(out.getvalue().splitlines()[-1])
    return record, received, answer, refusals(ctx)


def test_hbone_from_another_identity_is_refused_401(tmp_path: Path) -> None:
    record, received, answer, counted = asyncio.run(
        hbone_once(bound_workload(), tmp_path, INTRUDER_ID))
    assert received == [] and answer == "refused 401", (received, answer)
    assert record["outcome"] == "denied" and record["transport"] == "hbone", record
    assert "bypassed waypoint demo/waypoint" in record["reason"]
    assert str(INTRUDER_ID) in record["reason"]
    assert counted == {"waypoint_bypassed/inbound": 1.0}


def test_hbone_from_the_waypoint_reaches_the_app(tmp_path: Path) -> None:
    record, received, answer, counted = asyncio.run(
        hbone_once(bound_workload(), tmp_path, WAYPOINT_ID))
    assert received == [b"DELETE /items/1 HTTP/1.1\r\n\r\n"], received
    assert answer == "app answered"
    assert record["outcome"] != "denied" and counted == {}


# ---- explain says the same ---------------------------------------------------------

def bound_snapshots(waypoint: pb.WaypointRef = WAYPOINT_REF) -> dict[str, pb.Snapshot]:
    """The explain fixtures with catalog-v1-0 itself bound to demo/waypoint."""
    snaps = snapshots()
    for snap in snaps.values():
        for w in snap.workloads:
            if w.name == "catalog-v1-0":
                w.waypoint.CopyFrom(waypoint)
    return snaps


def explain(src: str, dst: str, snaps: dict[str, pb.Snapshot], method: str = "GET"
            ) -> Explanation:
    ns, _, name = src.partition("/")
    node = next(w.node for w in WORKLOADS if w.namespace == ns and w.name == name)
    return Explainer(snaps.__getitem__).explain(
        ExplainRequest((ns, name), parse_destination(dst), method), node)


@pytest.mark.parametrize(("src", "dst", "why"), [
    ("legacy/client", "demo/catalog-v1-0:8080", "plaintext connection cannot come from it"),
    # catalog-v1 has no waypoint: the source's node proxy goes straight to the pod.
    ("demo/frontend-0", "catalog-v1.demo:80", "the peer is spiffe://cluster.local/ns/demo/"
     "sa/frontend"),
])
def test_explain_shows_the_refusal(src: str, dst: str, why: str) -> None:
    e = explain(src, dst, bound_snapshots())
    assert not e.allowed
    assert e.decided_by == "waypoint demo/waypoint"
    assert "bypassed waypoint demo/waypoint" in e.reason and why in e.reason, e.reason
    assert e.backends[0]["pod"] == "demo/catalog-v1-0" and e.backends[0]["allowed"] is False
    assert any(s.stage == "waypoint" for s in e.steps)


def test_explain_through_the_waypoint_is_allowed() -> None:
    e = explain("demo/frontend-0", "catalog.demo:80/items", bound_snapshots())
    assert e.allowed, e.as_dict()
    bound = [b for b in e.backends if b["pod"] == "demo/catalog-v1-0"]
    assert bound and all(b["allowed"] for b in bound)


def test_explain_is_the_proxy_decision() -> None:
    """Whatever explain says of a hop, the handlers' check says the same."""
    snaps = bound_snapshots()
    wl = next(w for w in snaps["node-1"].workloads if w.name == "catalog-v1-0")
    cases: list[tuple[str, str, Callable[[], None]]] = [
        ("legacy/client", "demo/catalog-v1-0:8080",
         lambda: delivery.check_waypoint(wl, None)),
        ("demo/frontend-0", "catalog-v1.demo:80",
         lambda: delivery.check_waypoint(wl, "spiffe://cluster.local/ns/demo/sa/frontend")),
    ]
    for src, dst, check in cases:
        with pytest.raises(delivery.WaypointBypassed) as info:
            check()
        assert explain(src, dst, snaps).reason == str(info.value)

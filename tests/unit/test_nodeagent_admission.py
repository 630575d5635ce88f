"""Fail closed before any policy (issue 20 audit): the node proxy serves nothing while
what decides a connection is missing — no snapshot yet (agent just started, a worker
not yet sent one), no policy for the pod in it, no certificate for the pod.

The decisions (nodeagent.admission) are tested pure; the handlers are run on real
loopback sockets to show they reset the client and never reach the destination."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import ssl
from collections.abc import Callable

import pytest

from mesh.api import config_pb2 as pb
from mesh.hbone import StaticTls
from mesh.identity.spiffe import SpiffeId
from nodeagent import admission
from nodeagent.accesslog import AccessLog
from nodeagent.errors import CertificatePending, ConfigNotReceived, PolicyUnknown
from nodeagent.metrics import ProxyMetrics
from nodeagent.proxy.handlers import ProxyContext, handle_inbound_plaintext, handle_outbound
from nodeagent.proxy.pod_listeners import PodEndpoint
from nodeagent.proxy.tunnel import Tunnels
from nodeagent.state import ProxyState

# The pod's netns is our own: were the handlers to connect, they would reach the app.
POD = PodEndpoint("demo", "web-0", "uid-web", "/proc/self/ns/net", "127.0.0.2", "",
                  "spiffe://cluster.local/ns/demo/sa/web")


class Certs:
    """Certificates as the proxy sees them: one identity may be missing."""

    def __init__(self, missing: bool = False) -> None:
        self.missing = missing

    def certificate_error(self, identity: SpiffeId) -> str | None:
        return f"no valid certificate for {identity} (CA unreachable)" if self.missing else None

    def client_tls(self, identity: SpiffeId) -> StaticTls:
        raise AssertionError("no tunnel may be opened in these tests")

    def server_context_provider(self, identity: SpiffeId) -> Callable[[], ssl.SSLContext]:
        raise AssertionError("no tunnel may be served in these tests")


def snapshot_state(policy: bool = True) -> ProxyState:
    wl = pb.Workload(uid="uid-web", namespace="demo", name="web-0", addresses=["127.0.0.2"],
                     enrolled=True)
    snap = pb.Snapshot(version="v7", workloads=[wl])
    if policy:
        snap.workload_policies.append(pb.WorkloadPolicy(workload_uid="uid-web",
                                                        mtls_mode=pb.PERMISSIVE))
    return ProxyState.from_snapshot(snap)


def test_nothing_is_admitted_before_the_first_snapshot() -> None:
    empty = ProxyState()
    assert not empty.received and snapshot_state().received
    with pytest.raises(ConfigNotReceived, match="demo/web-0: no configuration received"):
        admission.outbound(empty, Certs(), POD)
    with pytest.raises(ConfigNotReceived):
        admission.inbound(empty, POD, None)
    with pytest.raises(ConfigNotReceived):
        admission.inbound_plaintext(empty, Certs(), POD, None)


def test_inbound_needs_the_pods_policy_in_the_snapshot() -> None:
    state = snapshot_state(policy=False)
    wl = state.workloads_by_uid["uid-web"]
    with pytest.raises(PolicyUnknown, match="config version v7 carries no policy"):
        admission.inbound(state, POD, wl)
    with pytest.raises(PolicyUnknown):
        admission.inbound(snapshot_state(), POD, None)  # the pod is not in it at all
    admission.inbound(snapshot_state(), POD, wl)  # known: admitted
    admission.outbound(state, Certs(), POD)  # outbound needs no policy of its own


def test_a_pod_without_certificate_is_refused_both_ways() -> None:
    state = snapshot_state()
    wl = state.workloads_by_uid["uid-web"]
    with pytest.raises(CertificatePending, match="CA unreachable"):
        admission.outbound(state, Certs(missing=True), POD)
    with pytest.raises(CertificatePending):
        admission.inbound_plaintext(state, Certs(missing=True), POD, wl)
    admission.inbound_plaintext(state, Certs(), POD, wl)


async def _run(handler_name: str, state: ProxyState, certs: Certs) -> tuple[dict[str, str],
                                                                            int, bytes]:
    """One connection through a handler, on loopback: (access record, connections the
    destination app got, what the client read)."""
    reached = 0

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal reached
        reached += 1
        writer.write(b"app answered")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(app, "127.0.0.1", 0)
    app_port = server.sockets[0].getsockname()[1]
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    accepted.setblocking(False)
    out = io.StringIO()
    ctx = ProxyContext(state, ProxyMetrics(), AccessLog(out), Tunnels(certs),
                       lambda s: ("127.0.0.1", app_port))
    try:
        handler = handle_outbound if handler_name == "outbound" else handle_inbound_plaintext
        try:  # a refusal is immediate; a relay would wait for the client to close
            await asyncio.wait_for(handler(ctx, POD, accepted), 3)
        except TimeoutError:
            out.write(json.dumps({"outcome": "still relaying", "reason": ""}) + "\n")
        client.settimeout(5)
        try:
            got = client.recv(100)
        except ConnectionResetError:
            got = b"<reset>"
        listener.setblocking(False)
        try:  # inbound delivers to the captured port itself: did anything dial it?
            listener.accept()[0].close()
            reached += 1
        except BlockingIOError:
            pass
    finally:
        client.close()
        listener.close()
        server.close()
        await server.wait_closed()
    record: dict[str, str] = json.loads(out.getvalue().splitlines()[-1])
    refusals = {(s.labels["cause"], s.labels["direction"]): s.value
                for m in ctx.metrics.registry.collect() if m.name == "ambient_connections_refused"
                for s in m.samples if s.name.endswith("_total")}
    record["counted"] = json.dumps({f"{c}/{d}": v for (c, d), v in refusals.items()})
    return record, reached, got


@pytest.mark.parametrize("direction", ["outbound", "inbound_plaintext"])
def test_handlers_refuse_before_the_first_snapshot(direction: str) -> None:
    record, reached, got = asyncio.run(_run(direction, ProxyState(), Certs()))
    assert reached == 0 and got == b"<reset>", (reached, got)
    assert record["outcome"] == "refused"
    assert "no configuration received from the controller yet" in record["reason"]
    assert json.loads(record["counted"]) == {f"no_config/{direction}": 1.0}


@pytest.mark.parametrize("direction", ["outbound", "inbound_plaintext"])
def test_handlers_refuse_a_pod_waiting_for_its_certificate(direction: str) -> None:
    record, reached, got = asyncio.run(_run(direction, snapshot_state(), Certs(missing=True)))
    assert reached == 0 and got == b"<reset>", (reached, got)
    assert record["outcome"] == "refused" and "CA unreachable" in record["reason"]
    assert json.loads(record["counted"]) == {f"certificate_pending/{direction}": 1.0}

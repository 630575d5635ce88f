"""Warm ahead (nodeagent/proxy/warm.py): a pod's first connection to a service opens
tunnels (no CONNECT) to the service's other endpoints, so its next first connection to
each is pooled. Real TLS HBONE servers on loopback addresses (127.0.0.x), the real
pool, Tunnels and their dialer; the warmed connection carries the SVID checks."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from mesh.api import config_pb2 as pb
from mesh.hbone import HboneClientPool, HboneServer, HboneTunnelError, StaticTls, default_dial
from mesh.hbone.client import HboneWrongPeer
from mesh.identity import tls
from mesh.identity.ca import CertificateAuthority
from mesh.identity.spiffe import SpiffeId
from nodeagent.certs import CertificateUnavailableError
from nodeagent.outbound_plan import Hop, Transport
from nodeagent.proxy.pod_listeners import PodEndpoint
from nodeagent.proxy.tunnel import Tunnels
from nodeagent.proxy.warm import Warmer, WarmTarget, enabled_from_environment
from nodeagent.state import ProxyState
from tests.hbone_helpers import CLIENT_ID, SERVER_ID, listen, new_ca, relay_handler, tcp_app
from tests.identity_helpers import mint

OTHER_ID = SpiffeId.for_workload("shop", "impostor")
# netns None: the proxy's own dialer, from this process's namespace (loopback).
CLIENT_POD = PodEndpoint("shop", "cart", "uid-c", cast(str, None), "127.0.0.1", "",
                         str(CLIENT_ID))
SERVICE = "shop/payments"


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": True})


class Materials:
    """The client pod's TLS material (the certificate manager's role)."""

    def __init__(self, client: StaticTls) -> None:
        self.client = client

    def client_tls(self, identity: SpiffeId) -> StaticTls:
        return self.client

    def certificate_error(self, identity: SpiffeId) -> str | None:
        return None

    def server_context_provider(self, identity: SpiffeId):  # type: ignore[no-untyped-def]
        raise AssertionError("not serving")


class Endpoint:
    """One HBONE server on its own loopback address, presenting `identity`; counts the
    handshakes it completes (a new TLS connection) and the CONNECTs it gets."""

    def __init__(self, address: str, ctx: ssl.SSLContext) -> None:
        self.address = address
        self.ctx = ctx
        self.handshakes = 0
        self.requests = 0
        self.port = 0

    def provider(self) -> ssl.SSLContext:
        self.handshakes += 1  # called once per accepted connection
        return self.ctx


@contextlib.asynccontextmanager
async def endpoints(ca: CertificateAuthority, identities: list[SpiffeId],
                    app_port: int) -> AsyncIterator[list[Endpoint]]:
    eps, tasks, socks = [], [], []
    for i, identity in enumerate(identities):
        ck, bundle = mint(ca, identity)
        ep = Endpoint(f"127.0.0.{i + 2}", tls.server_context(ck, bundle))
        handler = relay_handler()

        async def counted(request, ep=ep, handler=handler):  # type: ignore[no-untyped-def]
            ep.requests += 1
            await handler(request)

        sock = listen(ep.address)
        ep.port = sock.getsockname()[1]
        server = HboneServer(ep.provider, counted)
        tasks.append(asyncio.ensure_future(server.serve(sock)))
        socks.append(sock)
        eps.append(ep)
    try:
        yield eps
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for s in socks:
            s.close()


def client_tls(ca: CertificateAuthority) -> StaticTls:
    ck, bundle = mint(ca, CLIENT_ID)
    return StaticTls(str(CLIENT_ID), tls.client_context(ck, bundle))


def hops_for(eps: list[Endpoint], identities: list[SpiffeId], app_port: int) -> list[Hop]:
    """The plan of a connection to SERVICE: its endpoints in round-robin order."""
    out = []
    for ep, identity in zip(eps, identities, strict=True):
        wl = pb.Workload(name=ep.address, namespace="shop", enrolled=True,
                         identity=str(identity))
        out.append(Hop(Transport.HBONE, ep.address, ep.port, f"127.0.0.1:{app_port}", wl,
                       SERVICE, target_port=app_port))
    return out


async def ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The app behind the endpoints: the tunnels here close at once (reset is fine)."""
    with contextlib.suppress(ConnectionError):
        await reader.read(10)
    writer.close()


async def until(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def tunnel_through(tunnels: Tunnels, hop: Hop, expected: SpiffeId) -> None:
    stream = await tunnels.open(CLIENT_POD, hop.address, hop.port, hop.authority, str(expected))
    await stream.aclose()


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.mark.anyio
async def test_first_use_of_a_service_warms_its_other_endpoints(tmp_path: Path) -> None:
    """After one connection to a 3-endpoint service, the pod has a connection to each of
    the three; tunnels to the other two then open no new TLS connection."""
    ca = new_ca(tmp_path / "ca")
    ids = [SERVER_ID, SERVER_ID, SERVER_ID]
    async with tcp_app(ping) as app, endpoints(ca, ids, app) as eps:
        tunnels = Tunnels(Materials(client_tls(ca)), HboneClientPool(),
                          warmer=Warmer(enabled=True))
        registry = CollectorRegistry()
        tunnels.register_metrics(registry)
        hops = hops_for(eps, ids, app)
        try:
            await tunnel_through(tunnels, hops[0], SERVER_ID)
            assert tunnels.service_connected(ProxyState(), CLIENT_POD, hops[0], hops) == 2
            await until(lambda: tunnels.pool.warmed == 2)
            assert [ep.handshakes for ep in eps] == [1, 1, 1]
            assert [ep.requests for ep in eps] == [1, 0, 0]  # warming sends no CONNECT
            assert len(tunnels.pool.connections()) == 3
            assert metric(registry, "ambient_tunnel_warmed_total", outcome="opened") == 2
            assert metric(registry, "ambient_hbone_connections_opened_total") == 3

            for hop in hops[1:]:
                await tunnel_through(tunnels, hop, SERVER_ID)
            assert [ep.handshakes for ep in eps] == [1, 1, 1]  # no new TLS connection
            assert [ep.requests for ep in eps] == [1, 1, 1]
            assert tunnels.pool.connections_opened == 3
            assert metric(registry, "ambient_tunnel_warmed_used_total") == 2

            # Once per (pod, service): a second use warms nothing more.
            assert tunnels.service_connected(ProxyState(), CLIENT_POD, hops[1], hops) == 0
        finally:
            await tunnels.pool.aclose()


@pytest.mark.anyio
async def test_a_warmed_tunnel_to_the_wrong_identity_is_refused(tmp_path: Path) -> None:
    """An endpoint presenting a valid SVID of another identity than the one the
    destination should have: the warmed connection is closed, never pooled, counted;
    a tunnel to it is still refused."""
    ca = new_ca(tmp_path / "ca")
    ids = [SERVER_ID, OTHER_ID]
    async with tcp_app(ping) as app, endpoints(ca, ids, app) as eps:
        tunnels = Tunnels(Materials(client_tls(ca)), HboneClientPool(),
                          warmer=Warmer(enabled=True))
        registry = CollectorRegistry()
        tunnels.register_metrics(registry)
        hops = hops_for(eps, [SERVER_ID, SERVER_ID], app)  # both should be SERVER_ID
        try:
            await tunnel_through(tunnels, hops[0], SERVER_ID)
            assert tunnels.service_connected(ProxyState(), CLIENT_POD, hops[0], hops) == 1
            await until(lambda: tunnels.pool.warm_refused == 1)
            assert eps[1].handshakes == 1  # the handshake ran, the SVID check refused it
            assert [c.peer_address[0] for c in tunnels.pool.connections()] == [eps[0].address]
            assert metric(registry, "ambient_tunnel_warmed_total", outcome="refused") == 1
            assert metric(registry, "ambient_tunnel_warmed_total", outcome="opened") == 0
            with pytest.raises(HboneTunnelError, match="expected"):
                await tunnel_through(tunnels, hops[1], SERVER_ID)
            assert eps[1].requests == 0
            # The refused connection is not pooled either when a tunnel dialled it.
            assert [c.peer_address[0] for c in tunnels.pool.connections()] == [eps[0].address]
        finally:
            await tunnels.pool.aclose()


@pytest.mark.anyio
async def test_pool_warm_to_the_wrong_identity_raises_and_pools_nothing(tmp_path: Path) -> None:
    ca = new_ca(tmp_path / "ca")
    async with tcp_app(ping) as app, endpoints(ca, [OTHER_ID], app) as eps:
        pool = HboneClientPool()
        try:
            with pytest.raises(HboneWrongPeer):
                await pool.warm(client_tls(ca), (eps[0].address, eps[0].port),
                                expected_peer=SERVER_ID)
            assert pool.connections() == [] and pool.warm_refused == 1 and pool.warmed == 0
        finally:
            await pool.aclose()


@pytest.mark.anyio
async def test_a_peer_from_another_trust_domain_is_never_warmed(tmp_path: Path) -> None:
    """The warmed handshake verifies the chain: an endpoint whose SVID comes from
    another CA (trust domain) fails the handshake; nothing is pooled."""
    ca = new_ca(tmp_path / "ca")
    foreign = new_ca(tmp_path / "foreign", "other.example")
    foreign_id = SpiffeId("other.example", "shop", "payments")
    async with tcp_app(ping) as app, endpoints(foreign, [foreign_id], app) as eps:
        pool = HboneClientPool(connect_timeout=3.0)
        try:
            with pytest.raises(HboneTunnelError):
                await pool.warm(client_tls(ca), (eps[0].address, eps[0].port))
            assert pool.connections() == [] and pool.warmed == 0
        finally:
            await pool.aclose()


@pytest.mark.anyio
async def test_warming_off_opens_no_extra_tunnel(tmp_path: Path) -> None:
    ca = new_ca(tmp_path / "ca")
    ids = [SERVER_ID, SERVER_ID, SERVER_ID]
    async with tcp_app(ping) as app, endpoints(ca, ids, app) as eps:
        tunnels = Tunnels(Materials(client_tls(ca)), HboneClientPool(),
                          warmer=Warmer(enabled=False))
        hops = hops_for(eps, ids, app)
        try:
            await tunnel_through(tunnels, hops[0], SERVER_ID)
            assert tunnels.service_connected(ProxyState(), CLIENT_POD, hops[0], hops) == 0
            await asyncio.sleep(0.3)
            assert [ep.handshakes for ep in eps] == [1, 0, 0]
            assert tunnels.pool.connections_opened == 1 and tunnels.pool.warmed == 0
        finally:
            await tunnels.pool.aclose()


@pytest.mark.anyio
async def test_an_unused_warmed_connection_closes_after_the_idle_timeout(
        tmp_path: Path) -> None:
    ca = new_ca(tmp_path / "ca")
    async with tcp_app(ping) as app, endpoints(ca, [SERVER_ID], app) as eps:
        pool = HboneClientPool(idle_timeout=0.2)
        source = client_tls(ca)
        dest = (eps[0].address, eps[0].port)
        try:
            assert await pool.warm(source, dest, expected_peer=SERVER_ID)
            [conn] = pool.connections()
            await asyncio.wait_for(conn.lost, 3)
            assert pool.connections() == []
            # Closed: warmed anew; already pooled: not warmed twice.
            assert await pool.warm(source, dest)
            assert not await pool.warm(source, dest)
            assert pool.warmed == 2 and eps[0].handshakes == 2
        finally:
            await pool.aclose()


def test_warming_is_bounded_per_service_and_once_per_pod_and_service() -> None:
    opened: list[WarmTarget] = []

    async def main() -> None:
        async def open_one(target: WarmTarget) -> bool:
            opened.append(target)
            return True

        warmer = Warmer(enabled=True, per_service=8, remembered=2)
        targets = [WarmTarget(f"10.0.0.{i}", 15008, None) for i in range(20)]
        assert warmer.service_used("ns/a", "ns/svc", targets, open_one) == 8
        assert warmer.service_used("ns/a", "ns/svc", targets, open_one) == 0
        assert warmer.service_used("ns/b", "ns/svc", targets[:3], open_one) == 3
        assert warmer.service_used("ns/a", "ns/other", [], open_one) == 0
        await asyncio.sleep(0.05)  # the background tasks run
        await warmer.aclose()

    asyncio.run(main())
    assert [t.address for t in opened[:8]] == [f"10.0.0.{i}" for i in range(8)]
    assert len(opened) == 11


def test_the_switch() -> None:
    assert enabled_from_environment({})
    assert enabled_from_environment({"AMBIENT_WARM_TUNNELS": "1"})
    for off in ("0", "false", "off", "No"):
        assert not enabled_from_environment({"AMBIENT_WARM_TUNNELS": off})


def test_at_most_in_flight_warming_handshakes_at_a_time() -> None:
    """The proxy is one event loop: 8 handshakes at once would stall the pod's next
    foreground connection; warming runs at most `in_flight` at a time, all finish."""
    current = peak = done = 0

    async def main() -> None:
        async def open_one(target: WarmTarget) -> bool:
            nonlocal current, peak, done
            current += 1
            peak = max(peak, current)
            await asyncio.sleep(0.01)
            current -= 1
            done += 1
            return True

        warmer = Warmer(enabled=True)
        targets = [WarmTarget(f"10.0.0.{i}", 15008, None) for i in range(8)]
        assert warmer.service_used("ns/a", "ns/svc", targets, open_one) == 8
        assert warmer.service_used("ns/b", "ns/svc", targets, open_one) == 8
        await until(lambda: done == 16)
        await warmer.aclose()

    asyncio.run(main())
    assert peak == 1


def test_warming_waits_while_foreground_tunnels_are_dialled() -> None:
    """A warming handshake starts only while no tunnel is being opened for a real
    connection (the pool's foreground_setups), so a pod's real connections go first."""
    opened: list[float] = []
    busy = [True]

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def open_one(target: WarmTarget) -> bool:
            opened.append(loop.time())
            return True

        warmer = Warmer(enabled=True, busy=lambda: busy[0])
        warmer.service_used("ns/a", "ns/svc", [WarmTarget("10.0.0.1", 15008, None)], open_one)
        await asyncio.sleep(0.1)
        assert opened == []
        busy[0] = False
        await until(lambda: len(opened) == 1)
        await warmer.aclose()

    asyncio.run(main())


@pytest.mark.anyio
async def test_the_pool_counts_foreground_setups_not_warming(tmp_path: Path) -> None:
    ca = new_ca(tmp_path / "ca")
    async with tcp_app(ping) as app, endpoints(ca, [SERVER_ID, SERVER_ID], app) as eps:
        pool = HboneClientPool()
        source = client_tls(ca)
        seen: list[int] = []

        async def dial(host: str, port: int):  # type: ignore[no-untyped-def]
            seen.append(pool.foreground_setups)
            return await default_dial(host, port)

        try:
            await pool.warm(source, (eps[0].address, eps[0].port), dial=dial)
            stream = await pool.connect(source, (eps[1].address, eps[1].port),
                                        f"127.0.0.1:{app}", dial=dial)
            await stream.aclose()
            assert seen == [0, 1] and pool.foreground_setups == 0
            # A real tunnel was just opened: not quiet for long (warming waits).
            assert pool.quiet_for(0.0) and not pool.quiet_for(5.0)
        finally:
            await pool.aclose()


class NoCertificate(Materials):
    """The source pod's certificate is not issued (or expired): no client context."""

    def client_tls(self, identity: SpiffeId) -> StaticTls:
        def refuse() -> ssl.SSLContext:
            raise CertificateUnavailableError(f"no valid certificate for {identity}")
        return StaticTls(str(identity), refuse)


@pytest.mark.anyio
async def test_warming_without_a_source_certificate_opens_nothing(tmp_path: Path) -> None:
    """Fail closed: no certificate, no warmed connection; counted as failed."""
    ca = new_ca(tmp_path / "ca")
    ids = [SERVER_ID, SERVER_ID]
    async with tcp_app(ping) as app, endpoints(ca, ids, app) as eps:
        tunnels = Tunnels(NoCertificate(client_tls(ca)), HboneClientPool(),
                          warmer=Warmer(enabled=True))
        registry = CollectorRegistry()
        tunnels.register_metrics(registry)
        hops = hops_for(eps, ids, app)
        try:
            assert tunnels.service_connected(ProxyState(), CLIENT_POD, hops[0], hops) == 1
            await until(lambda: tunnels.warmer.failed == 1)
            assert [ep.handshakes for ep in eps] == [0, 0]
            assert tunnels.pool.connections() == []
            assert metric(registry, "ambient_tunnel_warmed_total", outcome="failed") == 1
        finally:
            await tunnels.pool.aclose()


def test_no_warming_through_a_waypoint_or_to_plaintext_endpoints() -> None:
    """A service bound to a waypoint is reached only through it (nothing to warm
    beside it); plaintext endpoints have no tunnel."""
    tunnels = Tunnels(Materials(cast(StaticTls, None)), warmer=Warmer(enabled=True))
    wl = pb.Workload(name="w", namespace="shop", enrolled=True, identity=str(SERVER_ID))
    via = Hop(Transport.HBONE, "10.0.0.9", 15008, "10.0.0.1:80", wl, SERVICE, via_waypoint=True,
              target_port=80, waypoint="shop/waypoint")
    assert tunnels.service_connected(ProxyState(), CLIENT_POD, via, [via]) == 0
    plain = [Hop(Transport.PLAINTEXT, f"10.0.0.{i}", 80, f"10.0.0.{i}:80", None, SERVICE,
                 target_port=80) for i in (1, 2)]
    assert tunnels.service_connected(ProxyState(), CLIENT_POD, plain[0], plain) == 0
    hbone_first = Hop(Transport.HBONE, "10.0.0.3", 15008, "10.0.0.3:80", wl, SERVICE,
                      target_port=80)
    # Only plaintext others: nothing to warm (and no task started).
    assert tunnels.service_connected(ProxyState(), CLIENT_POD, hbone_first,
                                     [hbone_first, *plain]) == 0


@pytest.mark.anyio
async def test_a_pool_closed_during_warming_keeps_no_connection(tmp_path: Path) -> None:
    ca = new_ca(tmp_path / "ca")
    async with tcp_app(ping) as app, endpoints(ca, [SERVER_ID], app) as eps:
        pool = HboneClientPool()
        warming = asyncio.ensure_future(pool.warm(client_tls(ca), (eps[0].address, eps[0].port)))
        await asyncio.sleep(0)  # the warm has started dialling
        await pool.aclose()
        assert await warming is False
        await asyncio.sleep(0.05)
        assert all(c.closed for c in pool.connections()) and pool.warmed == 0

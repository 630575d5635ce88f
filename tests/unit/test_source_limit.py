"""The per-source cap of the node proxy (nodeagent.proxy.source_limit) and its use by
the HBONE server: a count that leaked (never released when a connection ends) would
lock a source out for good, one that was never taken would not cap anything. Real TLS
on loopback, real raw TCP peers that never handshake (no root)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from mesh.hbone import HboneClientPool, HboneServer
from nodeagent.metrics import ProxyMetrics
from nodeagent.proxy.source_limit import (
    SourceLimit,
    SourceLimitConfigError,
    cap_from_environment,
)
from tests.hbone_helpers import echo, hbone_serving, mtls_pair, new_ca, relay_handler, tcp_app


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": True})


def refused(metrics: ProxyMetrics, direction: str) -> float:
    value = metrics.registry.get_sample_value(
        "ambient_connections_refused_total", {"cause": "source_limit", "direction": direction})
    return value or 0.0


def test_cap_per_source_and_path_released_once() -> None:
    metrics = ProxyMetrics()
    limit = SourceLimit(2, metrics)
    a1, a2 = limit.admit("outbound", "ns/a"), limit.admit("outbound", "ns/a")
    assert a1 is not None and a2 is not None
    assert limit.admit("outbound", "ns/a") is None  # the third from the same pod
    assert limit.admit("outbound", "ns/b") is not None  # another pod is not affected
    assert limit.admit("inbound", "ns/a") is not None  # another path neither
    assert refused(metrics, "outbound") == 1
    a1()
    a1()  # idempotent: a double release must not open room for a third
    assert limit.admit("outbound", "ns/a") is not None
    assert limit.admit("outbound", "ns/a") is None
    assert refused(metrics, "outbound") == 2


def test_refusals_logged_once_per_flood(capsys: pytest.CaptureFixture[str]) -> None:
    limit = SourceLimit(1, ProxyMetrics())
    held = limit.admit("inbound_plaintext", "10.0.0.9")
    assert held is not None
    for _ in range(50):
        assert limit.admit("inbound_plaintext", "10.0.0.9") is None
    assert capsys.readouterr().out.count("source_limit") == 1
    held()  # under the cap again: the next flood is logged again
    assert limit.admit("inbound_plaintext", "10.0.0.9") is not None
    assert limit.admit("inbound_plaintext", "10.0.0.9") is None
    assert capsys.readouterr().out.count("source_limit") == 1


@pytest.mark.parametrize("raw", ["0", "-3", "many"])
def test_a_bad_cap_is_refused_not_ignored(raw: str) -> None:
    with pytest.raises(SourceLimitConfigError, match="AMBIENT_MAX_CONNECTIONS_PER_SOURCE"):
        cap_from_environment({"AMBIENT_MAX_CONNECTIONS_PER_SOURCE": raw})
    assert cap_from_environment({}) == 4096


def raw_peer(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def was_reset(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.anyio
async def test_hbone_server_counts_handshakes_and_tunnels_per_peer(tmp_path: Path) -> None:
    server_ctx, client_tls = mtls_pair(new_ca(tmp_path / "ca"))
    metrics = ProxyMetrics()
    limit = SourceLimit(2, metrics)
    server = HboneServer(lambda: server_ctx, relay_handler(),
                         admit=lambda peer: limit.admit("inbound", peer))
    async with hbone_serving(server) as port, tcp_app(echo) as app_port:
        loop = asyncio.get_running_loop()
        first, second = raw_peer(port), raw_peer(port)  # handshakes never sent
        third = raw_peer(port)
        third.settimeout(2)
        assert await loop.run_in_executor(None, was_reset, third)  # over the cap
        second.settimeout(0.3)
        assert not await loop.run_in_executor(None, was_reset, second)  # still held
        assert refused(metrics, "inbound") == 1
        first.close()  # its handshake fails: its place is released
        await asyncio.sleep(0.3)
        pool = HboneClientPool()
        try:
            stream = await pool.connect(client_tls, ("127.0.0.1", port),
                                        f"127.0.0.1:{app_port}")
            await stream.send(b"ping")
            assert await asyncio.wait_for(stream.receive(), 5) == b"ping"
            late = raw_peer(port)  # a tunnel + a handshake in progress: full
            late.settimeout(2)
            assert await loop.run_in_executor(None, was_reset, late)
            await stream.aclose()
        finally:
            await pool.aclose()
        await asyncio.sleep(0.5)  # the tunnel connection is gone: released
        again = raw_peer(port)
        again.settimeout(0.3)
        assert not await loop.run_in_executor(None, was_reset, again)
        assert refused(metrics, "inbound") == 2
        for s in (second, third, late, again):
            s.close()

"""HBONE end to end on loopback with real TLS, real sockets and real apps:
1 GiB byte-identical, 1000 concurrent streams on one connection, refused upstream ->
client reset, and certificate + root rotation under load with zero failures.

AMBIENT_SOAK=1 runs the rotation test with a 10 s lifetime for 60 s (else 4 s / 15 s)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc.aio
import pytest

from controller.ca_service import add_certificate_service
from mesh.hbone import HboneClientPool, HboneRequest, HboneServer
from mesh.identity.ca_client import CertificateClient
from mesh.identity.node_token import derive_node_token
from nodeagent.certs import CertificateManager, PodRef
from tests.grpc_loop import quiet_stale_grpc_callbacks  # noqa: F401 (autouse)
from tests.hbone_helpers import (
    CLIENT_ID,
    SERVER_ID,
    echo,
    hbone_mesh,
    listen,
    outbound_proxy,
    relay_handler,
    tcp_app,
)
from tests.identity_helpers import new_ca

GIB = 1 << 30
BLOCK = 1 << 20


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": True})


def blocks(total: int) -> Iterator[bytes]:
    """Distinct 1 MiB blocks (a counter stamped on random bytes), cheap to generate."""
    base = bytearray(os.urandom(BLOCK))
    for i in range(total // BLOCK):
        base[:8] = i.to_bytes(8, "big")
        yield bytes(base)


class HashingSink:
    """A TCP app in a thread: hashes all it receives, answers the hex digest, closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            h = hashlib.sha256()
            buf = bytearray(1 << 20)
            while n := conn.recv_into(buf):
                h.update(memoryview(buf)[:n])
                self.received += n
            conn.sendall(h.hexdigest().encode())

    def close(self) -> None:
        self.sock.close()


def send_and_digest(port: int, total: int) -> tuple[str, str]:
    """The client app: send `total` bytes, half-close, read the peer's digest."""
    h = hashlib.sha256()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for block in blocks(total):
            h.update(block)
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(1024):
            answer += chunk
    return h.hexdigest(), answer.decode()


@pytest.mark.anyio
@pytest.mark.timeout(180)
async def test_one_gib_through_one_tunnel_is_byte_identical(tmp_path: Path) -> None:
    sink = HashingSink()
    try:
        async with hbone_mesh(tmp_path) as mesh:
            pool = HboneClientPool()
            async with outbound_proxy(pool, mesh.client_tls, ("127.0.0.1", mesh.server_port),
                                      f"127.0.0.1:{sink.port}") as app_port:
                start = time.perf_counter()
                sent, received = await asyncio.to_thread(send_and_digest, app_port, GIB)
                elapsed = time.perf_counter() - start
            await pool.aclose()
        assert sink.received == GIB
        assert sent == received
        print(f"\n1 GiB through one HBONE tunnel: {elapsed:.1f} s, "
              f"{GIB / elapsed / 1e6:.0f} MB/s, sha256 {sent[:16]}... identical")
    finally:
        sink.close()


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_thousand_concurrent_streams_on_one_pooled_connection(tmp_path: Path) -> None:
    async with hbone_mesh(tmp_path) as mesh, tcp_app(echo) as app_port:
        pool = HboneClientPool()
        gate = asyncio.Event()
        peak = 0

        async def one(i: int) -> bytes:
            nonlocal peak
            stream = await pool.connect(mesh.client_tls, ("127.0.0.1", mesh.server_port),
                                        f"127.0.0.1:{app_port}")
            peak = max(peak, sum(c.active_streams for c in pool.connections()))
            await gate.wait()  # all 1000 streams are open at the same time
            msg = f"stream {i} ".encode() * 100
            await stream.send(msg)
            await stream.send_eof()
            got = b""
            while True:
                try:
                    got += await stream.receive()
                except Exception as exc:  # EndOfStream
                    if type(exc).__name__ != "EndOfStream":
                        raise
                    break
            return got if got == msg else b"MISMATCH"

        tasks = [asyncio.ensure_future(one(i)) for i in range(1000)]
        while peak < 1000 and not any(t.done() for t in tasks):
            await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 90)
        assert all(r != b"MISMATCH" for r in results)
        assert len(results) == 1000
        assert peak == 1000
        assert pool.connections_opened == 1
        assert len(mesh.server.connections) == 1
        await pool.aclose()


@pytest.mark.anyio
async def test_refused_upstream_resets_client_connection(tmp_path: Path) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()
    async with hbone_mesh(tmp_path) as mesh:
        pool = HboneClientPool()
        async with outbound_proxy(pool, mesh.client_tls, ("127.0.0.1", mesh.server_port),
                                  f"127.0.0.1:{dead_port}") as app_port:
            def app() -> str:
                with socket.create_connection(("127.0.0.1", app_port)) as sock:
                    sock.settimeout(5)
                    try:
                        data = sock.recv(10)
                    except ConnectionResetError:
                        return "reset"
                    return f"got {data!r}"
            assert await asyncio.to_thread(app) == "reset"
        await pool.aclose()


class Pods:
    def __init__(self, placements: dict[tuple[str, str], tuple[str, str]]) -> None:
        self.placements = placements

    def pod_placement(self, namespace: str, name: str) -> tuple[str, str] | None:
        return self.placements.get((namespace, name))

    def is_waypoint(self, namespace: str, name: str) -> bool:
        return False  # no waypoints in this test: every pod's identity is its own


@pytest.mark.anyio
@pytest.mark.timeout(240)
async def test_rotation_under_load_has_zero_failures(tmp_path: Path) -> None:
    soak = os.environ.get("AMBIENT_SOAK") == "1"
    ttl = dt.timedelta(seconds=10 if soak else 4)
    duration = 60.0 if soak else 15.0
    secret = b"r" * 32
    ca = new_ca(tmp_path / "ca", default_ttl=ttl)
    server = grpc.aio.server()
    add_certificate_service(server, ca, Pods({("shop", "cart-1"): ("node-a", "cart"),
                                              ("shop", "pay-1"): ("node-b", "payments")}),
                            secret)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    chan_a = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    chan_b = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    failures: list[str] = []
    sink = HashingSink()
    try:
        async with CertificateManager(CertificateClient(chan_a, "node-a",
                                                        derive_node_token(secret, "node-a")),
                                      "cluster.local", min_backoff=0.2) as node_a, \
                CertificateManager(CertificateClient(chan_b, "node-b",
                                                     derive_node_token(secret, "node-b")),
                                   "cluster.local", min_backoff=0.2) as node_b, \
                tcp_app(echo) as echo_port:
            await node_a.add_pod(PodRef("shop", "cart-1", "cart"))
            await node_b.add_pod(PodRef("shop", "pay-1", "payments"))
            first_serial = node_a.material(CLIENT_ID).certified_key.serial
            old_root = ca.trust_bundle().roots[0]
            seen: list[HboneRequest] = []
            hbone = HboneServer(node_b.server_context_provider(SERVER_ID),
                                relay_handler(seen))
            lsock = listen()
            serving = asyncio.ensure_future(hbone.serve(lsock))
            pool = HboneClientPool()
            dest = ("127.0.0.1", lsock.getsockname()[1])
            source = node_a.client_tls(CLIENT_ID)

            async def long_transfer() -> tuple[str, str]:
                """One tunnel kept busy for the whole run, across every renewal."""
                async with outbound_proxy(pool, source, dest,
                                          f"127.0.0.1:{sink.port}") as app_port:
                    def app() -> tuple[str, str]:
                        h = hashlib.sha256()
                        with socket.create_connection(("127.0.0.1", app_port)) as sock:
                            end = time.monotonic() + duration
                            for block in blocks(1 << 40):
                                if time.monotonic() > end:
                                    break
                                chunk = block[:64 * 1024]
                                h.update(chunk)
                                sock.sendall(chunk)
                                time.sleep(0.01)
                            sock.shutdown(socket.SHUT_WR)
                            answer = b""
                            while data := sock.recv(1024):
                                answer += data
                        return h.hexdigest(), answer.decode()
                    return await asyncio.to_thread(app)

            async def new_connections() -> int:
                done = 0
                end = time.monotonic() + duration
                while time.monotonic() < end:
                    try:
                        stream = await pool.connect(source, dest, f"127.0.0.1:{echo_port}",
                                                    expected_peer=SERVER_ID)
                        await stream.send(b"ping")
                        await stream.send_eof()
                        got = await stream.receive()
                        if got != b"ping":
                            failures.append(f"echo mismatch {got!r}")
                        await stream.aclose()
                        done += 1
                    except Exception as exc:
                        failures.append(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.1)
                return done

            async def rotate_root() -> None:
                await asyncio.sleep(duration / 5)
                ca.rotate(propagation=ttl)

            transfer, connections, _ = await asyncio.gather(
                long_transfer(), new_connections(), rotate_root())
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            lsock.close()
            await pool.aclose()

            sent, received = transfer
            assert sent == received, "long transfer corrupted across rotation"
            assert failures == [], failures[:5]
            assert connections > duration * 5
            renewals = node_a.renewals
            # several renewals happened, and the old root is gone by the end
            assert renewals >= int(duration / (ttl.total_seconds() / 2)) - 2
            assert node_a.material(CLIENT_ID).certified_key.serial != first_serial
            bundle = ca.trust_bundle()
            assert old_root not in bundle.roots
            leaf = node_a.material(CLIENT_ID).certified_key.leaf
            leaf.verify_directly_issued_by(bundle.roots[0])
            assert pool.connections_opened >= renewals  # new certs -> new connections
            print(f"\nrotation: lifetime {ttl.total_seconds():.0f}s over {duration:.0f}s: "
                  f"{renewals} renewals on node-a, {node_b.renewals} on node-b, root rotated, "
                  f"{connections} new tunnels + 1 long transfer "
                  f"({sink.received / 1e6:.0f} MB), {pool.connections_opened} connections, "
                  f"0 failures")
    finally:
        sink.close()
        await chan_a.close()
        await chan_b.close()
        await server.stop(None)

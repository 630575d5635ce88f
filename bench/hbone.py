"""HBONE benchmark: tunnel throughput and per-stream setup latency, pooled vs unpooled.

The HBONE server (plus a discard sink and an echo app behind it) runs in a child
process, the client in this one, so each side has its own core as two node proxies
would. Loopback only. Run: `python -m bench.hbone [--mib 1024] [--streams 2000]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog
import uvloop

from mesh.hbone import (
    HboneClientPool,
    HboneRequest,
    HboneServer,
    StaticTls,
    TunnelSettings,
    relay,
)
from mesh.identity import tls
from mesh.identity.bundle import TrustBundle
from mesh.identity.ca import CertificateAuthority
from mesh.identity.csr import build_csr, generate_key
from mesh.identity.spiffe import SpiffeId
from mesh.identity.svid import CertifiedKey, load_pem_chain

CLIENT = SpiffeId.for_workload("bench", "client")
SERVER = SpiffeId.for_workload("bench", "server")
BLOCK = 256 * 1024


def tune_malloc() -> None:
    """glibc: keep big buffers off mmap and untrimmed (DESIGN §9: 1.16x relay speed)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 4 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 * 1024 * 1024)  # M_TRIM_THRESHOLD


def mint(ca: CertificateAuthority, identity: SpiffeId) -> CertifiedKey:
    key = generate_key()
    issued = ca.issue(build_csr(key, identity), identity)
    return CertifiedKey(key, load_pem_chain(issued.chain_pem))


# ---- server process ---------------------------------------------------------------------

async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    n = 0
    while data := await reader.read(1 << 20):
        n += len(data)
    writer.write(str(n).encode())
    await writer.drain()
    writer.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def serve(state: Path, framing: str, flush_gap: float = math.inf) -> None:
    ck = CertifiedKey.from_pem((state / "server.key").read_bytes(),
                               (state / "server.pem").read_bytes())
    bundle = TrustBundle.from_pem("cluster.local", (state / "bundle.pem").read_bytes())
    ctx = tls.server_context(ck, bundle)
    loop = asyncio.get_running_loop()

    async def handler(request: HboneRequest) -> None:
        app = socket.socket()
        app.setblocking(False)
        app.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await loop.sock_connect(app, request.target)
        except OSError:
            app.close()
            await request.reject(503)
            return
        await relay(await request.accept(), app)

    sink = await asyncio.start_server(_sink, "127.0.0.1", 0, backlog=4096)
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0, backlog=4096)
    lsock = socket.create_server(("127.0.0.1", 0), backlog=4096)
    print(json.dumps({"hbone": lsock.getsockname()[1], "sink": sink.sockets[0].getsockname()[1],
                      "echo": echo.sockets[0].getsockname()[1]}), flush=True)
    await HboneServer(lambda: ctx, handler,
                      settings=TunnelSettings(framing=framing, flush_gap=flush_gap)
                      ).serve(lsock)


# ---- client measurements ----------------------------------------------------------------

async def _drain_stream(stream: object) -> bytes:
    import anyio
    parts = []
    while True:
        try:
            parts.append(await stream.receive())  # type: ignore[attr-defined]
        except anyio.EndOfStream:
            return b"".join(parts)


async def throughput_hbone(pool: HboneClientPool, src: StaticTls, port: int, sink: int,
                           total: int) -> float:
    block = os.urandom(BLOCK)
    stream = await pool.connect(src, ("127.0.0.1", port), f"127.0.0.1:{sink}")
    start = time.perf_counter()
    for _ in range(total // BLOCK):
        await stream.send(block)
    await stream.send_eof()
    got = await _drain_stream(stream)
    elapsed = time.perf_counter() - start
    assert int(got) == total, got
    return total / elapsed / 1e6


async def throughput_direct(sink: int, total: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", sink)
    block = os.urandom(BLOCK)
    start = time.perf_counter()
    for _ in range(total // BLOCK):
        writer.write(block)
        await writer.drain()
    writer.write_eof()
    got = await reader.read()
    elapsed = time.perf_counter() - start
    assert int(got) == total
    writer.close()
    return total / elapsed / 1e6


async def setup_latency(pool: HboneClientPool, src: StaticTls, port: int, echo: int,
                        n: int) -> list[float]:
    """connect -> 1 byte there and back -> close, one stream at a time."""
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        stream = await pool.connect(src, ("127.0.0.1", port), f"127.0.0.1:{echo}")
        await stream.send(b"x")
        assert await stream.receive() == b"x"
        await stream.aclose()
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


async def direct_latency(echo: int, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", echo)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        writer.close()
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def round_trips(pool: HboneClientPool, src: StaticTls, port: int, echo: int,
                      n: int, server_pid: int) -> tuple[list[float], dict[str, float]]:
    """1-byte ping-pong on one established tunnel: the added per-message latency, and
    the CPU time per round trip of this process (client side: the test loop included)
    and of the server process (HBONE server + relay + echo app)."""
    stream = await pool.connect(src, ("127.0.0.1", port), f"127.0.0.1:{echo}")
    samples = []
    cpu0 = (cpu_seconds(os.getpid()), cpu_seconds(server_pid))
    for _ in range(n):
        start = time.perf_counter()
        await stream.send(b"x")
        assert await stream.receive() == b"x"
        samples.append((time.perf_counter() - start) * 1e6)
    cpu = {"client": round((cpu_seconds(os.getpid()) - cpu0[0]) * 1e6 / n, 1),
           "server": round((cpu_seconds(server_pid) - cpu0[1]) * 1e6 / n, 1)}
    await stream.aclose()
    return samples, cpu


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run(args: argparse.Namespace, state: Path) -> dict[str, object]:
    ca = CertificateAuthority.load_or_create(state / "ca")
    server_ck, client_ck = mint(ca, SERVER), mint(ca, CLIENT)
    bundle = ca.trust_bundle()
    (state / "server.pem").write_bytes(server_ck.chain_pem())
    fd = os.open(state / "server.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, server_ck.key_pem())
    os.close(fd)
    (state / "bundle.pem").write_bytes(bundle.to_pem())
    child = subprocess.Popen([sys.executable, "-m", "bench.hbone", "--serve", str(state),
                              "--framing", args.framing,
                              "--flush-gap", str(args.flush_gap)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        ports = json.loads(child.stdout.readline())
        src = StaticTls(str(CLIENT), tls.client_context(client_ck, bundle))
        total = args.mib * 1024 * 1024
        tunnel = TunnelSettings(framing=args.framing, flush_gap=args.flush_gap)
        pooled = HboneClientPool(settings=tunnel)
        unpooled = HboneClientPool(settings=tunnel, pooled=False)
        res: dict[str, object] = {}
        res["direct_MBps"] = max([await throughput_direct(ports["sink"], total)
                                  for _ in range(args.rounds)])
        res["hbone_MBps"] = max([await throughput_hbone(pooled, src, ports["hbone"],
                                                        ports["sink"], total)
                                 for _ in range(args.rounds)])
        await setup_latency(pooled, src, ports["hbone"], ports["echo"], 50)  # warm-up
        direct = await direct_latency(ports["echo"], args.streams)
        pooled_s = await setup_latency(pooled, src, ports["hbone"], ports["echo"], args.streams)
        unpooled_s = await setup_latency(unpooled, src, ports["hbone"], ports["echo"],
                                         max(100, args.streams // 4))
        rtt, res["round_trip_cpu_us"] = await round_trips(pooled, src, ports["hbone"],
                                                          ports["echo"], args.streams,
                                                          child.pid)
        for name, s in (("direct_connect_echo_us", direct), ("pooled_stream_us", pooled_s),
                        ("unpooled_stream_us", unpooled_s), ("tunnel_round_trip_us", rtt)):
            res[name] = {"p50": round(pct(s, 0.5), 1), "p99": round(pct(s, 0.99), 1),
                         "mean": round(statistics.fmean(s), 1), "n": len(s)}
        res["connections_opened"] = {"pooled": pooled.connections_opened,
                                     "unpooled": unpooled.connections_opened}
        await pooled.aclose()
        await unpooled.aclose()
        return res
    finally:
        child.terminate()
        child.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=1024, help="MiB per throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=2000, help="latency samples")
    parser.add_argument("--framing", choices=["h2core", "h2"], default="h2core",
                        help="HTTP/2 codec of both ends")
    parser.add_argument("--flush-gap", type=float, default=math.inf,
                        help="TunnelSettings.flush_gap of both ends (inf: always batch)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    tune_malloc()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    if args.serve:
        uvloop.run(serve(args.serve, args.framing, args.flush_gap))
        return
    with tempfile.TemporaryDirectory(prefix="bench-hbone-") as tmp:
        result = uvloop.run(run(args, Path(tmp)))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

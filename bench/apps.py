"""The programs the benchmark runs inside pods: servers (echo, sink, http) and clients
(rr, connect, bulk). Standalone on purpose (stdlib + uvloop, run as a script path), so
the very same client measures direct traffic, the mesh and the Envoy pair.

Clients print one JSON object on stdout. Latencies are in microseconds.
  echo PORT              echo every byte back (L4 request/response, new connections)
  sink PORT              count bytes until EOF, answer the count, close (bulk)
  http PORT              HTTP/1.1 keep-alive, a fixed 12-byte answer to every request
  rr HOST:PORT ...       1 kB request/response over persistent connections, at a fixed
                         rate (open loop: sends never wait for answers, so a proxy stall
                         shows in the tail) or at saturation (closed loop)
  connect HOST:PORT,...  new connection + 1 byte echoed, sequentially; round 0 touches
                         each target first (a cold tunnel for the mesh), later rounds
                         are pooled
  bulk HOST:PORT MIB     send MIB MiB, half-close, read the sink's count: MB/s
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket
import sys
import time

BLOCK = 256 * 1024


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return round(s[min(len(s) - 1, int(q * len(s)))], 1) if s else 0.0


def _stats(samples: list[float]) -> dict[str, float]:
    return {"p50": _pct(samples, 0.50), "p90": _pct(samples, 0.90),
            "p99": _pct(samples, 0.99), "n": len(samples)}


def _listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


# ---- servers -------------------------------------------------------------------------

class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Sink(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buf = bytearray(BLOCK)
        self.count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.count += nbytes

    def eof_received(self) -> bool:
        self.transport.write(str(self.count).encode())
        self.transport.close()
        return True


ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nhello world\n"


class Http(asyncio.Protocol):
    """Enough HTTP/1.1 for GETs without bodies (wrk): one answer per header block."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        data = self.pending + data
        n = data.count(b"\r\n\r\n")
        self.pending = data[data.rfind(b"\r\n\r\n") + 4:] if n else data
        if n:
            self.transport.write(ANSWER * n)


async def serve(kind: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    factory = {"echo": Echo, "sink": Sink, "http": Http}[kind]
    server = await loop.create_server(factory, sock=_listener(port))  # type: ignore[arg-type]
    await server.serve_forever()


# ---- request/response ----------------------------------------------------------------

class RrConn(asyncio.Protocol):
    def __init__(self, size: int, samples: list[float], closed_loop: bool,
                 record: list[bool]) -> None:
        self.size = size
        self.payload = os.urandom(size)
        self.samples = samples
        self.closed_loop = closed_loop
        self.record = record
        self.sent_at: collections.deque[float] = collections.deque()
        self.received = 0
        self.done = 0
        self.connected = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connected.set_result(None)

    def send(self, scheduled: float) -> None:
        self.sent_at.append(scheduled)
        self.transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        now = time.perf_counter()
        while self.received >= self.size and self.sent_at:
            self.received -= self.size
            start = self.sent_at.popleft()
            self.done += 1
            if self.record[0]:
                self.samples.append((now - start) * 1e6)
            if self.closed_loop:
                self.send(now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("closed"))


async def rr(host: str, port: int, conns: int, rate: float, duration: float,
             size: int, warmup: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    samples: list[float] = []
    record = [False]
    closed_loop = rate <= 0
    protos = []
    for _ in range(conns):
        _, proto = await loop.create_connection(
            lambda: RrConn(size, samples, closed_loop, record), host, port)
        protos.append(proto)
    if closed_loop:
        for p in protos:
            p.send(time.perf_counter())
        await asyncio.sleep(warmup)
        record[0] = True
        before = sum(p.done for p in protos)
        t0 = time.perf_counter()
        await asyncio.sleep(duration)
        elapsed = time.perf_counter() - t0
        record[0] = False
        count = sum(p.done for p in protos) - before
    else:
        # Open loop: request i goes out at t0 + i/rate on connection i % conns. Latency
        # counts from the real send: uvloop timers have 1 ms resolution, and counting
        # from the schedule would add that jitter to every sample.
        interval = 1.0 / rate
        total = int((warmup + duration) * rate)
        t0 = time.perf_counter() + 0.05
        first_recorded = int(warmup * rate)
        count = total - first_recorded
        for i in range(total):
            at = t0 + i * interval
            delay = at - time.perf_counter()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            if i == first_recorded:
                record[0] = True
            protos[i % conns].send(time.perf_counter())
        deadline = time.perf_counter() + 5
        while sum(len(p.sent_at) for p in protos) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        elapsed = duration
    for p in protos:
        p.transport.close()
    return {"rps": round(count / elapsed, 1), "latency_us": _stats(samples),
            "conns": conns, "rate": rate, "size": size}


# ---- new connections and bulk --------------------------------------------------------

def connect_latency(targets: list[tuple[str, int]], rounds: int) -> dict[str, object]:
    per_round: list[list[float]] = []
    for _ in range(rounds):
        samples = []
        for host, port in targets:
            t0 = time.perf_counter()
            with socket.create_connection((host, port), timeout=10) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(b"x")
                if s.recv(1) != b"x":
                    raise ConnectionError(f"{host}:{port}: no echo")
                samples.append((time.perf_counter() - t0) * 1e6)
        per_round.append(samples)
    later = [x for r in per_round[1:] for x in r]
    return {"first": _stats(per_round[0]), "later": _stats(later)}


def bulk(host: str, port: int, mib: int) -> dict[str, object]:
    block = os.urandom(BLOCK)
    total = mib * 1024 * 1024
    with socket.create_connection((host, port), timeout=60) as s:
        t0 = time.perf_counter()
        for _ in range(total // BLOCK):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(64):
            got += chunk
        elapsed = time.perf_counter() - t0
    if int(got or b"0") != total:
        raise ConnectionError(f"sink counted {got!r} bytes of {total}")
    return {"MBps": round(total / elapsed / 1e6, 1), "bytes": total,
            "seconds": round(elapsed, 3)}


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for kind in ("echo", "sink", "http"):
        sub.add_parser(kind).add_argument("port", type=int)
    r = sub.add_parser("rr")
    r.add_argument("target")
    r.add_argument("--conns", type=int, default=8)
    r.add_argument("--rate", type=float, default=0.0, help="requests/s in all; 0: saturate")
    r.add_argument("--duration", type=float, default=5.0)
    r.add_argument("--warmup", type=float, default=1.0)
    r.add_argument("--size", type=int, default=1024)
    c = sub.add_parser("connect")
    c.add_argument("targets")
    c.add_argument("--rounds", type=int, default=5)
    b = sub.add_parser("bulk")
    b.add_argument("target")
    b.add_argument("mib", type=int)
    args = p.parse_args()
    try:
        import uvloop
        run = uvloop.run
    except ImportError:
        run = asyncio.run  # type: ignore[assignment]
    if args.cmd in ("echo", "sink", "http"):
        run(serve(args.cmd, args.port))
        return
    if args.cmd == "rr":
        host, port = _addr(args.target)
        out = run(rr(host, port, args.conns, args.rate, args.duration, args.size,
                     args.warmup))
    elif args.cmd == "connect":
        out = connect_latency([_addr(t) for t in args.targets.split(",")], args.rounds)
    else:
        host, port = _addr(args.target)
        out = bulk(host, port, args.mib)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()

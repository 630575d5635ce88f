"""Shared kit of the waypoint end-to-end tests (no tests here): real backend servers
on loopback (aiohttp HTTP/WebSocket, grpcio), WAYPOINT snapshots built as the
controller builds them (mesh/api config.proto), and the real `ambient-waypoint`
process started with --snapshot and a plain --listen address."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from aiohttp import WSMsgType, web
from google.protobuf import json_format

from mesh.api import config_pb2 as pb

WAYPOINT = str(Path(sys.executable).with_name("ambient-waypoint"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def host(name: str) -> str:
    return f"{name}.default.svc.cluster.local"


# -- snapshots ---------------------------------------------------------------------------


def service(name: str, port: int, endpoints: list[int], app_protocol: str = "",
            addresses: str = "127.0.0.1", vip: str = "") -> pb.Service:
    """A Service on `port` whose endpoints are loopback servers on `endpoints`."""
    return pb.Service(
        namespace="default", name=name,
        hostnames=[name, f"{name}.default", f"{name}.default.svc", host(name)],
        vips=[vip] if vip else [],
        ports=[pb.ServicePort(name="http", port=port, target_port=port, protocol="TCP",
                              app_protocol=app_protocol)],
        endpoints=[pb.Endpoint(workload_uid=f"{name}-{i}", addresses=[addresses],
                               ports=[pb.EndpointPort(service_port=port, target_port=p)],
                               enrolled=False)
                   for i, p in enumerate(endpoints)],
    )


def backend(name: str, weight: int = 1, port: int = 0) -> pb.BackendRef:
    return pb.BackendRef(namespace="default", name=name, port=port, weight=weight,
                         hostname=host(name))


def route(name: str, parent: str, rules: list[pb.RouteRule]) -> pb.HTTPRoute:
    return pb.HTTPRoute(namespace="default", name=name,
                        parents=[pb.RouteParent(namespace="default", service=parent)],
                        rules=rules)


def waypoint_snapshot(served: list[pb.Service], others: list[pb.Service],
                      routes: list[pb.HTTPRoute], traffic: list[pb.TrafficPolicy],
                      authz: list[pb.Authorization]) -> pb.Snapshot:
    return pb.Snapshot(
        version="test-1", kind=pb.WAYPOINT, trust_domain="cluster.local",
        waypoint=pb.WaypointInfo(namespace="default", name="waypoint",
                                 identity="spiffe://cluster.local/ns/default/sa/waypoint",
                                 services=[f"default/{s.name}" for s in served]),
        services=[*served, *others], routes=routes, traffic_policies=traffic,
        authorizations=authz,
    )


# -- the waypoint process ------------------------------------------------------------------


@dataclass
class Waypoint:
    port: int
    admin_port: int
    access_log: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5).text

    def access_records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line]


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; always reaped (no zombie, no leak
    into the next test)."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def run_waypoint(snapshot: pb.Snapshot, tmp: Path, extra: list[str] | None = None
                 ) -> Iterator[Waypoint]:
    snap_file = tmp / "snapshot.json"
    snap_file.write_text(json_format.MessageToJson(snapshot))
    port, admin = free_port(), free_port()
    log = tmp / "access.log"
    stderr = open(tmp / "waypoint.stderr", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [WAYPOINT, "--name", "waypoint", "--snapshot", str(snap_file),
         "--listen", f"127.0.0.1:{port}", "--metrics-addr", f"127.0.0.1:{admin}",
         "--access-log", str(log), "--log-level", "warning", *(extra or [])],
        stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"waypoint exited: {(tmp / 'waypoint.stderr').read_text()}")
            try:
                if httpx.get(f"http://127.0.0.1:{admin}/healthz/ready", timeout=1
                             ).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("waypoint did not become ready in 20 s")
            time.sleep(0.05)
        yield Waypoint(port, admin, log, proc)
    finally:
        stop_process(proc)
        stderr.close()


# -- HTTP / WebSocket backends -------------------------------------------------------------


@dataclass
class Backend:
    """An aiohttp server answering `handler`; counts requests."""

    name: str
    port: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    requests: list[dict[str, object]] = field(default_factory=list)


class BackendLoop:
    """aiohttp servers on one event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def add(self, b: Backend, handler: Callable[[Backend, web.Request],
                                                Awaitable[web.StreamResponse]]) -> Backend:
        async def start() -> int:
            async def h(request: web.Request) -> web.StreamResponse:
                b.hits[request.method + " " + request.path] += 1
                return await handler(b, request)
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", h)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.runners.append(runner)
            return int(runner.addresses[0][1])
        b.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return b

    def close(self) -> None:
        async def stop() -> None:
            for r in self.runners:
                await r.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


async def answer_name(b: Backend, request: web.Request) -> web.Response:
    return web.Response(text=b.name)


async def echo(b: Backend, request: web.Request) -> web.StreamResponse:
    """Echo method, path, headers and body as JSON; /stream answers chunked."""
    body = await request.read()
    data = {"backend": b.name, "method": request.method, "path": request.path_qs,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body.decode("latin-1"), "chunked": request.headers.get(
                "Transfer-Encoding", "") == "chunked"}
    b.requests.append(data)
    if request.path == "/stream":
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(5):
            await resp.write(f"part{i};".encode())
        await resp.write_eof()
        return resp
    return web.json_response(data)


def fail_every(n: int) -> Callable[[Backend, web.Request], Awaitable[web.Response]]:
    """503 on every n-th request (n=1: always)."""
    async def handler(b: Backend, request: web.Request) -> web.Response:
        total = sum(b.hits.values())
        if total % n == 0:
            return web.Response(status=503, text="unavailable")
        return web.Response(text=b.name)
    return handler


def sleeping(seconds: float) -> Callable[[Backend, web.Request], Awaitable[web.Response]]:
    async def handler(b: Backend, request: web.Request) -> web.Response:
        await asyncio.sleep(seconds)
        return web.Response(text=b.name)
    return handler


async def status_500(b: Backend, request: web.Request) -> web.Response:
    return web.Response(status=500, text=b.name)


async def websocket_echo(b: Backend, request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str("echo:" + msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data[::-1])
    return ws


# -- gRPC backend ----------------------------------------------------------------------------


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"fail":
        context.set_trailing_metadata((("x-detail", "asked-to-fail"),))
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "you asked for it")
    context.set_trailing_metadata((("x-served-by", "grpc-backend"),))
    return b"hello " + request


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    n = int(request.decode() or "3")
    for i in range(n):
        yield f"item-{i}".encode()
    context.set_trailing_metadata((("x-items", str(n)),))


@contextlib.contextmanager
def grpc_backend() -> Iterator[int]:
    """A grpcio server with raw-bytes methods /test.Echo/Say (unary) and
    /test.Echo/Count (server streaming)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler("test.Echo", {
        "Say": grpc.unary_unary_rpc_method_handler(_unary),
        "Count": grpc.unary_stream_rpc_method_handler(_stream),
    })
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0).wait(5)


# -- a counting client in its own process ------------------------------------------------

_COUNT_CLIENT = """
import asyncio, collections, json, sys
import aiohttp
url, host, extra = sys.argv[1], sys.argv[2], sys.argv[5]
n, conc = int(sys.argv[3]), int(sys.argv[4])
headers = {"Host": host}
if extra:
    k, v = extra.split(":", 1)
    headers[k.strip()] = v.strip()
async def main():
    counts = collections.Counter()
    left = n
    conn = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def worker():
            nonlocal left
            while left > 0:
                left -= 1
                async with s.get(url, headers=headers) as r:
                    counts[f"{r.status} {(await r.text()).strip()}"] += 1
        await asyncio.gather(*(worker() for _ in range(conc)))
    print(json.dumps(counts))
asyncio.run(main())
"""


def http_count(url: str, host_header: str, n: int, concurrency: int = 8,
               header: str = "") -> Counter[str]:
    """Exactly `n` GETs with keep-alive from a separate process (so the client does
    not share a GIL with the backends), counted by "status body"."""
    out = subprocess.run([sys.executable, "-c", _COUNT_CLIENT, url, host_header, str(n),
                          str(concurrency), header],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return Counter(json.loads(out.stdout))

"""`ambient-waypoint --workers N`: N waypoint processes on one pod's ports.

Why processes: the waypoint is CPU-bound in Python on one core; a second core needs
a second interpreter. How they share the ports: every worker binds the HBONE port
(and any --listen port) with SO_REUSEPORT and the kernel spreads new connections over
the workers' listening sockets by a hash of the 4-tuple. A worker that is not
listening (dead, restarting) has no socket in the group, so no connection is queued
for it; nothing is relayed through the parent (it is not in the data path at all).
The parent holds each port bound (not listening) so that no other process can take
it between a worker's exit and its replacement.

Configuration and certificate: each worker is the single-process waypoint unchanged
-- its own subscription to the controller and its own certificate, whose key is
generated in the worker and never leaves it (nothing is written to disk and no
channel between processes carries a key). This was chosen over one subscription in
the parent pushing to workers because every security decision then stays in the one
code path that is already tested fail-closed (no config: 404; no certificate: no
HBONE listener), at the cost of N CSRs and N config streams for N <= cores.

Admin: the parent alone serves the metrics address. /metrics sums the workers'
expositions (nodeagent.workers.merge_expositions) and adds per-worker request counts
and a restart counter; /healthz/ready is 200 only while every worker is alive and
ready; /config_dump is one worker's, loopback only. Workers answer the parent on an
abstract unix socket (no file to leave behind when the pod is killed; reachable only
from the pod's network namespace, like its loopback admin port). A worker that exits
is restarted (with a growing delay while it keeps failing) and counted."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.abc
import structlog
from prometheus_client.parser import text_string_to_metric_families

from mesh.backoff import Backoff
from nodeagent.workers import merge_expositions
from waypoint.http1 import DownstreamInfo
from waypoint.messages import BodySource, BytesBody, RequestHead, Response, local_response
from waypoint.server import _is_loopback, serve_stream

log = structlog.get_logger("waypoint.workers")

# The worker learns its supervisor from this variable and dies with it (PDEATHSIG).
SUPERVISOR_ENV = "AMBIENT_WAYPOINT_SUPERVISOR"
MAX_WORKERS = 64
ADMIN_TIMEOUT = 2.0
_PR_SET_PDEATHSIG = 1


def die_with_supervisor() -> None:
    """In a worker: get SIGTERM when the supervisor goes, even by SIGKILL, so no
    orphan keeps serving (or holding the port) without the parent's checks; if the
    supervisor is already gone, exit now."""
    expected = os.environ.get(SUPERVISOR_ENV)
    if not expected:
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if str(os.getppid()) != expected:
        sys.exit("waypoint worker: its supervisor is gone")


def hold_port(addr: tuple[str, int]) -> socket.socket:
    """Bind (not listen) with SO_REUSEPORT: the port stays ours across worker restarts,
    and a port another program holds fails the start instead of a worker."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def admin_address(name: str) -> str:
    """`--admin-socket @name` is the abstract socket "\\0name" (argv holds no NUL)."""
    return "\0" + name[1:] if name.startswith("@") else name


@dataclass
class Worker:
    index: int
    admin: str  # "@name": an abstract unix socket
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0  # consecutive quick exits: the restart delay grows with them
    # 1 s after the second quick exit in a row, doubling up to 10 s (jittered).
    restart_backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Supervisor:
    """Starts, watches and restarts the workers; answers the admin port for all."""

    count: int
    argv_for: Callable[[int, str], list[str]]  # worker index, admin socket -> argv
    restarts: int = 0
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        tag = f"ambient-waypoint-{os.getpid()}-{secrets.token_hex(4)}"
        self.workers = [Worker(i, f"@{tag}-{i}") for i in range(self.count)]

    # ---- lifecycle -------------------------------------------------------------------
    def spawn(self, w: Worker) -> None:
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
        w.proc = subprocess.Popen(self.argv_for(w.index, w.admin), env=env)
        w.started = time.monotonic()
        log.info("worker started", worker=w.index, pid=w.proc.pid)

    async def run(self) -> None:
        """Keep every worker running until cancelled; then stop them all."""
        try:
            for w in self.workers:
                self.spawn(w)
            while True:
                await anyio.sleep(0.2)
                for w in self.workers:
                    if w.proc is None or w.alive:
                        continue
                    code = w.proc.returncode
                    quick = time.monotonic() - w.started < 10
                    w.failures = w.failures + 1 if quick else 0
                    delay = w.restart_backoff.delay(w.failures - 1) if w.failures else 0.0
                    self.restarts += 1
                    log.warning("worker exited: restarting", worker=w.index, pid=w.proc.pid,
                                code=code, restarts=self.restarts, in_s=delay)
                    w.proc = None
                    w.started = time.monotonic()
                    await anyio.sleep(delay)
                    self.spawn(w)
        finally:
            with anyio.CancelScope(shield=True):
                await self.stop()

    async def stop(self, grace: float = 5.0) -> None:
        procs = [w.proc for w in self.workers if w.proc is not None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        deadline = time.monotonic() + grace
        for p in procs:
            while p.poll() is None and time.monotonic() < deadline:
                await anyio.sleep(0.05)
            if p.poll() is None:
                p.kill()
                p.wait()

    # ---- the workers' admin ------------------------------------------------------------
    async def ask(self, w: Worker, path: str) -> tuple[int, bytes]:
        """GET `path` from a worker's admin socket: (status, body); (0, why) if it
        cannot answer."""
        if not w.alive:
            return 0, b"not running"
        try:
            with anyio.fail_after(ADMIN_TIMEOUT):
                stream = await anyio.connect_unix(admin_address(w.admin))
                async with stream:
                    await stream.send(f"GET {path} HTTP/1.1\r\nhost: worker\r\n"
                                      "connection: close\r\n\r\n".encode())
                    data = bytearray()
                    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                        while True:
                            data += await stream.receive(65536)
        except (OSError, TimeoutError) as e:
            return 0, f"admin socket: {e or type(e).__name__}".encode()
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        try:
            return int(head.split(b" ", 2)[1]), body
        except (IndexError, ValueError):
            return 0, b"malformed admin answer"

    async def ready(self) -> tuple[bool, str]:
        reasons = []
        for w in self.workers:
            status, body = await self.ask(w, "/healthz/ready")
            if status != 200:
                reasons.append(f"worker {w.index}: {body.decode(errors='replace').strip()}")
        return not reasons, "; ".join(reasons) or "ready"

    async def metrics(self) -> bytes:
        texts: list[str] = []
        per_worker: list[str] = []
        for w in self.workers:
            status, body = await self.ask(w, "/metrics")
            if status != 200:
                continue
            text = body.decode()
            texts.append(text)
            per_worker.append(f'ambient_waypoint_worker_requests_total{{worker="{w.index}"}} '
                              f"{_requests(text)!r}")
        own = [
            "# HELP ambient_waypoint_workers Worker processes configured (--workers).",
            "# TYPE ambient_waypoint_workers gauge",
            f"ambient_waypoint_workers {self.count}",
            "# HELP ambient_waypoint_workers_running Worker processes alive now.",
            "# TYPE ambient_waypoint_workers_running gauge",
            f"ambient_waypoint_workers_running {sum(w.alive for w in self.workers)}",
            "# HELP ambient_waypoint_worker_restarts_total Workers restarted after exiting.",
            "# TYPE ambient_waypoint_worker_restarts_total counter",
            f"ambient_waypoint_worker_restarts_total {self.restarts}",
            "# HELP ambient_waypoint_worker_requests_total Requests each worker served.",
            "# TYPE ambient_waypoint_worker_requests_total counter",
            *per_worker,
        ]
        merged = merge_expositions(texts) if texts else ""
        return (merged + "\n".join(own) + "\n").encode()

    async def admin(self, head: RequestHead, body: BodySource, info: DownstreamInfo
                    ) -> Response:
        path = head.path
        if path in ("/metrics", "/stats/prometheus"):
            data = await self.metrics()
            return Response(200, [("content-type", "text/plain; version=0.0.4"),
                                  ("content-length", str(len(data)))], BytesBody(data))
        if path == "/healthz/live":
            return local_response(200, "live")
        if path == "/healthz/ready":
            ok, why = await self.ready()
            return local_response(200 if ok else 503, why)
        if path == "/config_dump":
            if not _is_loopback(info.peer):
                return local_response(403, "/config_dump answers only on loopback")
            for w in self.workers:
                status, data = await self.ask(w, "/config_dump")
                if status == 200:
                    return Response(200, [("content-type", "application/json"),
                                          ("content-length", str(len(data)))], BytesBody(data))
            return local_response(503, "no worker answered")
        return local_response(404, "not found")

    async def serve_admin(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        async def one(stream: anyio.abc.SocketStream) -> None:
            peer = stream.extra(anyio.abc.SocketAttribute.remote_address)
            info = DownstreamInfo(peer=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple)
                                  else "")
            await serve_stream(stream, self.admin, info)
        await listener.serve(one)


def _requests(text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "istio_requests":
            total += sum(s.value for s in family.samples if s.name == "istio_requests_total")
    return total


async def supervise(count: int, argv_for: Callable[[int, str], list[str]],
                    admin: Sequence[anyio.abc.Listener[anyio.abc.SocketStream]],
                    held: Sequence[socket.socket]) -> None:
    """Run the supervisor until SIGTERM/SIGINT; `held` ports are released at the end."""
    sup = Supervisor(count, argv_for)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.run)
            for listener in admin:
                tg.start_soon(sup.serve_admin, listener)
            log.info("waypoint supervisor ready", workers=count)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    log.info("stopping workers")
                    tg.cancel_scope.cancel()
                    break
    finally:
        for s in held:
            s.close()

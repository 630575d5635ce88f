"""More cores for the node proxy when the load needs them.

The agent keeps accepting on every listener. When it runs hot (ScalePolicy), it
starts worker processes holding the same snapshot and certificates (pushed as they
change) and hands them accepted connections by SCM_RIGHTS, round robin with itself:
the expensive part (TLS, HTTP/2 framing, relaying) spreads over the cores while the
listeners, their handover and capture stay in one place. Plain accept() sharing was
measured first: one process won every accept of a burst (epoll wakes all, the
first drains the queue), so the kernel would not spread the load. When the node is
idle again workers are retired (they drain first). Workers send their metrics back
and the agent's /metrics sums them in, so dashboards see one proxy. Inbound HBONE
(15008) stays in the agent: its connections are few and long-lived (pooled).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog
from prometheus_client.parser import text_string_to_metric_families

from nodeagent import worker_channel
from nodeagent.proxy.pod_listeners import PodEndpoint

log = structlog.get_logger("nodeagent.workers")

# `python -m nodeagent.worker`, except that rich is kept out before structlog loads
# (~5 MB per worker; see mesh.logs.keep_console_renderers_out).
WORKER_ENTRY = ("from mesh.logs import keep_console_renderers_out; "
                "keep_console_renderers_out(); "
                "from nodeagent.worker import main; main()")


@dataclass
class ScalePolicy:
    """Sans-I/O: from CPU use samples (cores busy, one per second) to +1 / -1 / 0."""

    max_workers: int
    busy: float = 0.75  # the agent near one full core...
    busy_for: int = 3  # ...for this many seconds: add a worker
    idle: float = 0.05  # everything near idle...
    idle_for: int = 30  # ...this long: retire one
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=60))

    def decide(self, cpu: float, workers: int) -> int:
        self.samples.append(cpu)
        recent = list(self.samples)
        if (workers < self.max_workers and len(recent) >= self.busy_for
                and all(s >= self.busy for s in recent[-self.busy_for:])):
            self.samples.clear()
            return 1
        if (workers > 0 and len(recent) >= self.idle_for
                and all(s <= self.idle for s in recent[-self.idle_for:])):
            self.samples.clear()
            return -1
        return 0


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    channel: socket.socket
    metrics: str = ""
    handed: int = 0


class WorkerPool:
    def __init__(self, pin_name: str, fixed: int | None) -> None:
        self.pin_name = pin_name
        self.fixed = fixed
        self.policy = ScalePolicy(max_workers=max(0, (os.cpu_count() or 1) - 1))
        self.workers: list[Worker] = []
        self.snapshot = b""
        self.certs: dict[str, tuple[str, bytes]] = {}  # identity -> (serial, material)
        self.pods: dict[str, PodEndpoint] = {}
        self._turn = 0

    # ---- what every worker must hold -------------------------------------------------
    def _broadcast(self, header: dict[str, object], payload: bytes = b"",
                   fds: list[int] | None = None) -> None:
        for w in list(self.workers):
            try:
                worker_channel.send(w.channel, header, payload, fds)
            except OSError as e:
                log.warning("worker unreachable", pid=w.proc.pid, error=str(e))

    def set_snapshot(self, data: bytes) -> None:
        self.snapshot = data
        self._broadcast({"op": "snapshot"}, data)

    def set_certificate(self, identity: str, serial: str, material: bytes) -> None:
        if self.certs.get(identity, ("", b""))[0] != serial:
            self.certs[identity] = (serial, material)
            self._broadcast({"op": "cert", "identity": identity}, material)

    def add_pod(self, pod: PodEndpoint) -> None:
        self.pods[pod.key] = pod
        self._broadcast({"op": "pod", "pod": pod.__dict__})

    def dispatch(self, kind: str, pod: PodEndpoint, sock: socket.socket) -> bool:
        """Round robin over the agent and its workers; True when a worker took it."""
        if not self.workers:
            return False
        self._turn = (self._turn + 1) % (len(self.workers) + 1)
        if self._turn == 0:
            return False  # the agent's turn
        worker = self.workers[self._turn - 1]
        try:
            worker_channel.send(worker.channel, {"op": "conn", "kind": kind, "pod": pod.key},
                                fds=[sock.fileno()])
        except OSError:
            return False  # a dying worker: serve it here
        worker.handed += 1
        sock.close()
        return True

    def remove_pod(self, key: str) -> None:
        if self.pods.pop(key, None) is not None:
            self._broadcast({"op": "unpod", "key": key})

    # ---- lifecycle -----------------------------------------------------------------
    def spawn(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        parent.settimeout(2.0)  # a wedged worker must not wedge the agent
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER_ENTRY, str(child.fileno()), self.pin_name],
            pass_fds=[child.fileno()])
        child.close()
        worker = Worker(proc, parent)
        self.workers.append(worker)
        # Everything it needs, in order: state, certificates, then the sockets.
        worker_channel.send(parent, {"op": "snapshot"}, self.snapshot)
        for identity, (_, material) in self.certs.items():
            worker_channel.send(parent, {"op": "cert", "identity": identity}, material)
        for pod in self.pods.values():
            worker_channel.send(parent, {"op": "pod", "pod": pod.__dict__})
        log.info("worker started", pid=proc.pid, workers=len(self.workers))

    def retire(self) -> None:
        worker = self.workers.pop()
        with contextlib.suppress(OSError):
            worker_channel.send(worker.channel, {"op": "stop"})
        log.info("worker retiring", pid=worker.proc.pid, workers=len(self.workers))

    async def run(self) -> None:
        """Start the fixed number of workers, or scale on the agent's CPU use."""
        if self.fixed is not None:
            for _ in range(self.fixed):
                self.spawn()
        loop = asyncio.get_running_loop()
        for w in self.workers:
            loop.add_reader(w.channel.fileno(), self._on_message, w)
        last = time.process_time()
        try:
            while True:
                await asyncio.sleep(1.0)
                now = time.process_time()
                cpu, last = now - last, now
                self.workers = [w for w in self.workers if w.proc.poll() is None]
                if self.fixed is not None:
                    continue
                step = self.policy.decide(cpu, len(self.workers))
                if step > 0:
                    self.spawn()
                    loop.add_reader(self.workers[-1].channel.fileno(), self._on_message,
                                    self.workers[-1])
                elif step < 0:
                    w = self.workers[-1]
                    loop.remove_reader(w.channel.fileno())
                    self.retire()
        finally:
            while self.workers:
                self.retire()

    def _on_message(self, worker: Worker) -> None:
        try:
            msg = worker_channel.receive(worker.channel)
        except OSError:
            msg = None
        if msg is None:
            asyncio.get_running_loop().remove_reader(worker.channel.fileno())
            return
        if msg.header.get("op") == "metrics":
            worker.metrics = msg.payload.decode()

    def worker_metrics(self) -> list[str]:
        return [w.metrics for w in self.workers if w.metrics]


def merge_expositions(texts: Iterable[str]) -> str:
    """Sum samples with the same name and labels across processes (counters and
    gauges alike: each process counts its own connections)."""
    totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    meta: dict[str, tuple[str, str]] = {}
    order: list[str] = []
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_created"):  # a timestamp: summing means nothing
                    continue
                if family.name not in meta:
                    meta[family.name] = (family.type, family.documentation)
                    order.append(family.name)
                key = (sample.name, tuple(sorted(sample.labels.items())))
                totals[key] = totals.get(key, 0.0) + sample.value
    lines = []
    for name in order:
        mtype, doc = meta[name]
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {mtype}")
        for (sample_name, labels), value in totals.items():
            if sample_name == name or sample_name.startswith(name + "_"):
                rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.append(f"{sample_name}{{{rendered}}} {value!r}" if labels
                             else f"{sample_name} {value!r}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

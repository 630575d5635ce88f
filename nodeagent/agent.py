"""The node agent: one per node. Subscribes to the controller, runs the node's pods
(local mode), captures the enrolled ones with eBPF and serves them with the node proxy.

Tasks, all owned by `run()`'s task group: the config subscription, the pod loop
(restart crashed containers, report pod IPs), certificate renewal, the 15020 server.
A snapshot is applied in one step: index it (a bad one is NACKed, the last good one
stays), reconcile pods, fetch certificates, reconcile enrollment, then start the
containers of the enrolled pods: an app never runs uncaptured. A pod whose
certificate cannot be had (CA refused or unreachable) is captured all the same and
its connections are refused until it arrives (nodeagent.admission), never sent or
accepted in plaintext; /status names it under `pods_waiting_for_certificate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc.aio
import structlog
from prometheus_client import generate_latest

from ebpf.errors import EbpfError
from ebpf.redirector import Redirector
from mesh.api import config_pb2 as pb
from mesh.hbone import HboneClientPool, TunnelSettings
from mesh.identity.ca_client import CertificateClient
from mesh.identity.spiffe import SpiffeId
from mesh.ports import METRICS_PORT
from mesh.runtime import LocalRuntime, Node, Pod
from mesh.runtime.builder import build_in_child
from mesh.xds.pods import PodReporter
from mesh.xds.subscriber import ConfigSubscriber
from nodeagent import admin
from nodeagent.accesslog import AccessLog
from nodeagent.certs import CertificateManager, PodRef, log_waiting, obtain_all
from nodeagent.enrollment import EnrollmentController
from nodeagent.lifecycle import run_until_stopped, stop_on_signals
from nodeagent.listener_store import KeeperUnavailable, Listeners, ListenerStore
from nodeagent.metrics import ProxyMetrics
from nodeagent.pods import PodSupervisor
from nodeagent.proxy.handlers import ProxyContext
from nodeagent.proxy.pod_listeners import accept_loop
from nodeagent.proxy.relay import relay_sockets
from nodeagent.proxy.splice import Splicer
from nodeagent.proxy.streams import dial, listening_socket
from nodeagent.proxy.tunnel import Tunnels
from nodeagent.state import ProxyState
from nodeagent.workers import WorkerPool, merge_expositions

log = structlog.get_logger("nodeagent")

POD_LOOP_INTERVAL = 0.25
REPORT_EVERY = 5.0
ENROLL_RETRY = 2.0
# A waypoint needs a few long-lived channels to the controller; a pod flooding the
# relay must not spend the agent's descriptors (each relayed connection holds two).
RELAY_CONNECTIONS_PER_SOURCE = 16


@dataclass(frozen=True)
class AgentConfig:
    node: str
    cluster: str
    controller: str
    token: str
    state_dir: Path
    trust_domain: str = "cluster.local"
    drain_seconds: float = 5.0
    workers: int | None = None  # extra proxy processes; None: scale with the load
    tunnel: TunnelSettings = dataclasses.field(default_factory=TunnelSettings)  # HBONE timeouts


def release_free_memory() -> None:
    gc.collect()  # connection objects in reference cycles go first, then the heap
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def raise_fd_limit() -> int:
    """Every proxied connection costs two or three descriptors: take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The per-source cap (--max-connections-per-source) must bind before EMFILE does.
    log.info("descriptor limit", soft=hard, was=soft)
    return hard


def load_redirector(pin_name: str, cgroup: Path) -> Redirector:
    """Compile and attach in a short-lived child, then use the pinned objects here:
    bcc maps LLVM and clang (~100 MB) into any process that compiles, and the
    agent would carry them for its whole life."""
    script = ("import sys; from pathlib import Path; from ebpf.redirector import Redirector; "
              "Redirector.load(sys.argv[1], Path(sys.argv[2])).close(); "
              "from nodeagent.proxy.splice import install_or_log; install_or_log(sys.argv[1])")
    done = subprocess.run([sys.executable, "-c", script, pin_name, str(cgroup)],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise EbpfError(f"loading the BPF programs failed: {done.stderr.strip()[-2000:]}")
    return Redirector.open(pin_name)


class NodeAgent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.fd_limit = raise_fd_limit()
        self.runtime = LocalRuntime(cluster=config.cluster)
        self.node: Node = build_in_child(self.runtime, config.node)[0]  # no pyroute2 here
        self.redirector = load_redirector(f"{config.cluster}-{config.node}",
                                          self.node.cgroup_path)
        port = config.controller.rpartition(":")[2]
        token_file = config.state_dir / "waypoint.token"
        config.state_dir.mkdir(parents=True, exist_ok=True)
        token_file.touch(mode=0o600)
        token_file.write_text(config.token)
        self.pods = PodSupervisor(self.runtime, config.node, config.state_dir, {
            "AMBIENT_CONTROLLER": f"{self.node.host_ip}:{port}",  # the relay, see below
            "AMBIENT_TOKEN_FILE": str(token_file)}, may_start=self._captured_if_enrolled)
        self.metrics = ProxyMetrics()
        self.metrics.watch_inbound_capture(self.redirector.inbound_drops)
        self.pods_lock = asyncio.Lock()
        # One enrollment pass at a time: a snapshot and the retry loop both start one,
        # and a pass may wait on the CA (up to its timeout) between its steps.
        self.enroll_lock = asyncio.Lock()
        self.cert_pods: set[PodRef] = set()
        self.enrollment_errors: list[str] = []
        self.waiting_for_certificate: dict[str, str] = {}  # pod key -> why
        self._reported: list[tuple[str, str, Any]] = []
        self._last_report = 0.0
        self._applied = False

    def _connect(self) -> None:
        """gRPC objects belong to the running event loop: made here, not in __init__."""
        config = self.config
        self.channel = grpc.aio.insecure_channel(config.controller)
        self.certs = CertificateManager(
            CertificateClient(self.channel, config.node, config.token), config.trust_domain)
        tunnels = Tunnels(self.certs, HboneClientPool(settings=config.tunnel),
                          drain_seconds=config.drain_seconds)
        self.ctx = ProxyContext(ProxyState(), self.metrics, AccessLog(), tunnels,
                                self.redirector.original_destination,
                                splicer=Splicer.open(f"{config.cluster}-{config.node}"))
        try:
            store: ListenerStore | None = ListenerStore(config.state_dir / "listeners.sock")
        except KeeperUnavailable as e:
            log.warning("no listener handover", error=str(e))
            store = None
        self.listener_store = store
        self.workers = WorkerPool(f"{config.cluster}-{config.node}", config.workers)
        self.enrollment = EnrollmentController(self.redirector, self.ctx, Listeners(store),
                                               self.workers)
        self.subscriber = ConfigSubscriber(
            config.controller, kind=pb.NODE, name=config.node, node=config.node,
            token=config.token, apply=self.apply,
            pod_cidrs=[str(self.node.pod_cidr), str(self.node.pod_cidr6)])
        self.reporter = PodReporter(config.controller, node=config.node, token=config.token)

    # ---- snapshot ----------------------------------------------------------------
    async def apply(self, snapshot: pb.Snapshot) -> None:
        state = ProxyState.from_snapshot(snapshot)  # raises SnapshotRejected -> NACK
        hosts = {name: svc.vips[0] for svc in snapshot.services if svc.vips
                 for name in svc.hostnames}
        async with self.pods_lock:  # netlink + subprocess work: off the event loop
            await asyncio.to_thread(self.pods.reconcile, state.pods_to_run, hosts)
        self.ctx.state = state
        self.workers.set_snapshot(snapshot.SerializeToString())
        self._applied = True
        await self.enroll()
        async with self.pods_lock:
            self.pods.tick()  # the enrolled pods just captured may start now
        self.metrics.config_version.clear()
        self.metrics.config_version.labels(snapshot.version).set(1)
        await self.report_pods(force=True)
        log.info("snapshot applied", version=snapshot.version,
                 pods=len(state.pods_to_run), enrolled=len(self.enrollment.pods))

    def _captured_if_enrolled(self, spec: pb.PodToRun) -> bool:
        """Containers of an enrolled pod start only once it is captured."""
        if not spec.enrolled:
            return True
        enrolled = self.enrollment.pods.get(f"{spec.namespace}/{spec.name}")
        return enrolled is not None and enrolled.endpoint.uid == spec.uid

    async def enroll(self) -> None:
        """Capture exactly the enrolled pods that run here, certificate or not: a pod
        whose certificate cannot be had yet is captured, its connections refused
        (nodeagent.admission), and the certificate retried every ENROLL_RETRY."""
        async with self.enroll_lock:
            await self._enroll()

    async def _enroll(self) -> None:
        wanted: dict[str, tuple[pb.PodToRun, Pod]] = {}
        pod_refs: dict[PodRef, pb.PodToRun] = {}
        for spec in self.ctx.state.pods_to_run:
            running = self.pods.running(spec.namespace, spec.name)
            if not spec.enrolled or running is None:
                continue
            pod_refs[PodRef(spec.namespace, spec.name, spec.service_account)] = spec
            wanted[f"{spec.namespace}/{spec.name}"] = (spec, running.pod)
        missing = await obtain_all(self.certs, pod_refs)
        for ref, spec in pod_refs.items():
            if ref not in missing:
                self._share_certificate(spec.identity)
        for gone in self.cert_pods - set(pod_refs):
            self.certs.remove_pod(gone)
        self.cert_pods = set(pod_refs)
        waiting = {f"{r.namespace}/{r.name}": why for r, why in missing.items()}
        errors = [f"{key}: waiting for its certificate, connections refused: {why}"
                  for key, why in sorted(waiting.items())]
        errors += await self.enrollment.reconcile(wanted)
        log_waiting(self.waiting_for_certificate, waiting)
        self.waiting_for_certificate = waiting
        self.metrics.waiting_for_certificate.set(len(waiting))
        self.enrollment_errors = errors

    def _share_certificate(self, identity: str) -> None:
        """Workers get the same certificate (renewed ones too: called on every tick)."""
        try:
            material = self.certs.material(SpiffeId.parse(identity))
        except Exception:  # not issued yet: the next tick shares it
            return
        ck = material.certified_key
        self.workers.set_certificate(identity, f"{ck.serial:x}", json.dumps({
            "key": ck.key_pem().decode(), "chain": ck.chain_pem().decode(),
            "bundle": material.bundle.to_pem().decode()}).encode())

    def metrics_text(self) -> bytes:
        own = generate_latest(self.metrics.registry).decode()
        workers = self.workers.worker_metrics()
        return (merge_expositions([own, *workers]) if workers else own).encode()

    async def report_pods(self, force: bool = False) -> None:
        statuses = self.pods.statuses()
        summary = sorted((s.namespace + "/" + s.name, s.pod_ip, s.phase) for s in statuses)
        now = time.monotonic()
        if not force and summary == self._reported and now - self._last_report < REPORT_EVERY:
            return
        try:
            await self.reporter.report(statuses, timeout=3.0)
        except Exception as e:  # the controller may be down: the next tick retries
            log.debug("pod report failed", error=str(e))
            return
        self._reported, self._last_report = summary, now

    async def _pod_loop(self) -> None:
        last_retry = 0.0
        busy = False
        while True:
            # After a burst, hand freed heap back to the system: glibc keeps it otherwise,
            # and the agent would stay at its peak size for good.
            if busy and not self.enrollment.connections:
                release_free_memory()
            busy = bool(self.enrollment.connections)
            async with self.pods_lock:
                self.pods.tick()
            await self.report_pods()
            if self.enrollment_errors and time.monotonic() - last_retry > ENROLL_RETRY:
                last_retry = time.monotonic()
                await self.enroll()
            if self.workers.workers:
                for enrolled in self.enrollment.pods.values():
                    self._share_certificate(enrolled.endpoint.identity)
            await asyncio.sleep(POD_LOOP_INTERVAL)

    # ---- status --------------------------------------------------------------------
    def ready(self) -> bool:
        return self._applied and self.subscriber.connected

    def status(self) -> dict[str, Any]:
        return {
            "node": self.config.node,
            "connected": self.subscriber.connected,
            "config_version": self.subscriber.version,
            "last_error": self.subscriber.last_error,
            "nacks": self.subscriber.nacks,
            "bpf": self.redirector.status(),
            "enrolled_pods": self.enrollment.enrolled_keys(),
            "enrollment_errors": self.enrollment_errors,
            "pods_waiting_for_certificate": [
                {"pod": key, "reason": why}
                for key, why in sorted(self.waiting_for_certificate.items())],
            "pods": [{"pod": f"{s.namespace}/{s.name}", "ip": s.pod_ip,
                      "phase": pb.PodPhase.Name(s.phase)} for s in self.pods.statuses()],
            "certificates": [dataclasses.asdict(c) for c in self.certs.status()],
            "workers": [w.proc.pid for w in self.workers.workers],
        }

    # ---- lifecycle -----------------------------------------------------------------
    async def run(self) -> None:
        self._connect()
        stop = stop_on_signals()
        server = await admin.serve_http(
            admin.AdminEndpoints(self.metrics_text, self.status, self.ready),
            listening_socket(self.node.netns, str(self.node.host_ip), METRICS_PORT))
        log.info("node agent started", node=self.config.node, controller=self.config.controller,
                 metrics=f"{self.node.host_ip}:{METRICS_PORT} (netns {self.node.netns})")
        try:
            await run_until_stopped(
                stop, self.certs, [self.subscriber.run(), self._pod_loop(),
                                   self._controller_relay(), self.workers.run()],
                self.config.drain_seconds)
        finally:
            await self.enrollment.drain(self.config.drain_seconds, keep_capture=True)
            server.close()
            await server.wait_closed()
            with contextlib.suppress(Exception):
                await self.reporter.aclose()
            await self.channel.close(None)
            if self.listener_store is not None:
                self.listener_store.close()
            self.redirector.close()
            log.info("node agent stopped", node=self.config.node)

    async def _controller_relay(self) -> None:
        """Pods (waypoints) reach the controller at <node host IP>:15012, as pods reach
        a cluster service: relayed to the controller's own address."""
        host, _, port = self.config.controller.rpartition(":")
        listener = listening_socket(self.node.netns, str(self.node.host_ip), int(port))
        conns: set[asyncio.Task[None]] = set()
        held: dict[str, int] = {}  # relayed connections per source address
        flooding: set[str] = set()  # sources refused since last under the limit

        def admit(client: socket.socket) -> Coroutine[Any, Any, None] | None:
            try:
                source = str(client.getpeername()[0])
            except OSError:
                client.close()
                return None
            if held.get(source, 0) >= RELAY_CONNECTIONS_PER_SOURCE:
                client.close()
                self.metrics.refused("relay_limit", "inbound")
                if source not in flooding:  # once per flood: refusals cannot grow the log
                    flooding.add(source)
                    log.warning("controller relay refused", source=source,
                                limit=RELAY_CONNECTIONS_PER_SOURCE,
                                reason="too many connections from one address")
                return None
            held[source] = held.get(source, 0) + 1
            return forward(client, source)

        async def forward(client: socket.socket, source: str) -> None:
            try:
                try:
                    upstream = await dial(None, host, int(port))
                except OSError:
                    client.close()
                    return
                await relay_sockets(client, upstream)
            finally:
                held[source] -= 1
                if not held[source]:
                    del held[source]
                flooding.discard(source)

        try:
            await accept_loop(listener, admit, conns)
        finally:
            listener.close()

"""The node agent: one per node. Subscribes to the controller, runs the node's pods
(local mode), captures the enrolled ones with eBPF and serves them with the node proxy.

Tasks, all owned by `run()`'s task group: the config subscription, the pod loop
(restart crashed containers, report pod IPs), certificate renewal, the 15020 server.
A snapshot is applied in one step: index it (a bad one is NACKed, the last good one
stays), reconcile pods, fetch certificates, reconcile enrollment.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ebpf.redirector import Redirector
from mesh.api import config_pb2 as pb
from mesh.runtime import LocalRuntime, Node
from mesh.xds.pods import PodReporter
from mesh.xds.subscriber import ConfigSubscriber
from nodeagent import admin
from nodeagent.accesslog import AccessLog
from nodeagent.certs import CertificateManager
from nodeagent.enrollment import EnrollmentController
from nodeagent.metrics import ProxyMetrics
from nodeagent.pods import PodSupervisor
from nodeagent.proxy.handlers import ProxyContext
from nodeagent.proxy.streams import listening_socket
from nodeagent.proxy.tunnel import Tunnels
from nodeagent.state import ProxyState

log = structlog.get_logger("nodeagent")

POD_LOOP_INTERVAL = 0.25
REPORT_EVERY = 5.0
METRICS_PORT = 15020


@dataclass(frozen=True)
class AgentConfig:
    node: str
    cluster: str
    controller: str
    token: str
    state_dir: Path
    drain_seconds: float = 5.0


class NodeAgent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.runtime = LocalRuntime(cluster=config.cluster)
        self.node: Node = self.runtime.create_node(config.node)
        self.redirector = Redirector.load(f"{config.cluster}-{config.node}",
                                          self.node.cgroup_path)
        self.pods = PodSupervisor(self.runtime, config.node, config.state_dir)
        self.certs = CertificateManager.for_node(config.controller, config.node, config.token)
        self.metrics = ProxyMetrics()
        self.ctx = ProxyContext(ProxyState(), self.metrics, AccessLog(), Tunnels(self.certs),
                                self.redirector.original_destination)
        self.enrollment = EnrollmentController(self.redirector, self.ctx)
        self.subscriber = ConfigSubscriber(
            config.controller, kind=pb.NODE, name=config.node, node=config.node,
            token=config.token, apply=self.apply,
            pod_cidrs=[str(self.node.pod_cidr), str(self.node.pod_cidr6)])
        self.reporter = PodReporter(config.controller, node=config.node, token=config.token)
        self.enrollment_errors: list[str] = []
        self._reported: list[tuple[str, str, Any]] = []
        self._last_report = 0.0
        self._applied = False

    # ---- snapshot ----------------------------------------------------------------
    async def apply(self, snapshot: pb.Snapshot) -> None:
        state = ProxyState.from_snapshot(snapshot)  # raises SnapshotRejected -> NACK
        hosts = {name: svc.vips[0] for svc in snapshot.services if svc.vips
                 for name in svc.hostnames}
        self.pods.reconcile(state.pods_to_run, hosts)
        self.ctx.state = state
        wanted = {}
        for spec in state.pods_to_run:
            running = self.pods.running(spec.namespace, spec.name)
            if spec.enrolled and running is not None:
                wanted[f"{spec.namespace}/{spec.name}"] = (spec, running.pod)
                await self.certs.ensure(spec.identity, spec.namespace, spec.name)
        self.certs.retain({spec.identity for spec, _ in wanted.values()})
        self.enrollment_errors = await self.enrollment.reconcile(wanted)
        self.metrics.config_version.clear()
        self.metrics.config_version.labels(snapshot.version).set(1)
        self._applied = True
        await self.report_pods(force=True)
        log.info("snapshot applied", version=snapshot.version,
                 pods=len(state.pods_to_run), enrolled=len(wanted))

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
        while True:
            self.pods.tick()
            await self.report_pods()
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
            "pods": [{"pod": f"{s.namespace}/{s.name}", "ip": s.pod_ip,
                      "phase": pb.PodPhase.Name(s.phase)} for s in self.pods.statuses()],
            "certificates": self.certs.status(),
        }

    # ---- lifecycle -----------------------------------------------------------------
    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        app = admin.build_app(self.metrics.registry, self.status, self.ready)
        runner = await admin.serve(app, listening_socket(self.node.netns, str(self.node.host_ip),
                                                         METRICS_PORT))
        log.info("node agent started", node=self.config.node, controller=self.config.controller,
                 metrics=f"{self.node.host_ip}:{METRICS_PORT} (netns {self.node.netns})")
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self.subscriber.run()),
                         tg.create_task(self._pod_loop()),
                         tg.create_task(self.certs.run())]
                await stop.wait()
                log.info("draining", deadline=self.config.drain_seconds)
                for task in tasks:
                    task.cancel()
        finally:
            await self.enrollment.drain(self.config.drain_seconds, keep_capture=True)
            await runner.cleanup()
            with contextlib.suppress(Exception):
                await self.reporter.aclose()
            self.redirector.close()
            log.info("node agent stopped", node=self.config.node)

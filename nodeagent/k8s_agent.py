"""The node agent in Kubernetes mode: the kubelet runs the pods, this agent captures
the enrolled ones on its node and serves them with the node proxy.

What differs from local mode (nodeagent.agent) is where pods come from: a watch on
the API server (pods with spec.nodeName=<node>, namespaces) and the host's /proc,
instead of the controller's pods_to_run and our own runtime. Everything after that
is shared: certificates, EnrollmentController, proxy handlers, config subscription.
Tasks are owned by `run()`'s task group; a reconcile runs on every watch or snapshot
change and every `resync` seconds (a pod's processes may appear after its status)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc.aio
import structlog
from kubernetes_asyncio import client as kclient
from prometheus_client import generate_latest

from ebpf.redirector import Redirector
from mesh.api import config_pb2 as pb
from mesh.identity.ca_client import CertificateClient
from mesh.identity.token_source import TokenFile
from mesh.kube.kinds import NAMESPACES, PODS
from mesh.kube.reflector import Reflector
from mesh.ports import HEALTH_PORT
from mesh.runtime import Pod
from mesh.runtime.cgroups import cgroup2_root
from mesh.xds.subscriber import ConfigSubscriber
from nodeagent import admin
from nodeagent.accesslog import AccessLog
from nodeagent.certs import CertificateManager, PodRef, log_waiting, obtain_all
from nodeagent.enrollment import EnrollmentController
from nodeagent.k8s_pods import (
    PodLocator,
    container_ids,
    pod_spec,
    runnable,
    runtime_pod,
)
from nodeagent.lifecycle import run_until_stopped
from nodeagent.metrics import ProxyMetrics
from nodeagent.proxy.handlers import ProxyContext
from nodeagent.proxy.tunnel import Tunnels
from nodeagent.state import ProxyState

log = structlog.get_logger("nodeagent.k8s")


@dataclass(frozen=True)
class KubeAgentConfig:
    node: str
    controller: str
    token_file: Path
    trust_domain: str = "cluster.local"
    # Where the programs attach: the cgroup v2 root by default (every pod is below it).
    attach_cgroup: Path | None = None
    pin_name: str = "k8s"
    proc_root: Path = Path("/proc")
    health_addr: str = f"0.0.0.0:{HEALTH_PORT}"
    resync: float = 2.0
    drain_seconds: float = 5.0
    watch_timeout: int = 300


class KubeNodeAgent:
    def __init__(self, config: KubeAgentConfig, api: kclient.ApiClient) -> None:
        self.config = config
        self.api = api
        self.metrics = ProxyMetrics()
        self.locator = PodLocator(config.proc_root)
        self.cert_pods: set[PodRef] = set()
        self.errors: list[str] = []
        self.waiting_for_certificate: dict[str, str] = {}  # pod key -> why
        self.reconciles = 0
        self._dirty = asyncio.Event()
        self._applied = False
        # The pods the kubelet runs on this node, and the namespaces (their annotation).
        self.pods_watch = Reflector(PODS, api, self._dirty.set,
                                    field_selector=f"spec.nodeName={config.node}",
                                    watch_timeout=config.watch_timeout)
        self.namespaces_watch = Reflector(NAMESPACES, api, self._dirty.set,
                                          watch_timeout=config.watch_timeout)

    def _connect(self) -> None:
        c = self.config
        self.redirector = Redirector.load(f"{c.pin_name}-{c.node}",
                                          c.attach_cgroup or cgroup2_root())
        self.metrics.watch_inbound_capture(self.redirector.inbound_drops)
        self.channel = grpc.aio.insecure_channel(c.controller)
        # Read for every CSR and every (re)subscription: the kubelet rotates the token.
        token = TokenFile(c.token_file)
        self.certs = CertificateManager(CertificateClient(self.channel, c.node, token),
                                        c.trust_domain)
        self.ctx = ProxyContext(ProxyState(), self.metrics, AccessLog(), Tunnels(self.certs),
                                self.redirector.original_destination)
        self.enrollment = EnrollmentController(self.redirector, self.ctx)
        self.subscriber = ConfigSubscriber(c.controller, kind=pb.NODE, name=c.node, node=c.node,
                                           token=token, apply=self.apply)

    async def apply(self, snapshot: pb.Snapshot) -> None:
        self.ctx.state = ProxyState.from_snapshot(snapshot)  # SnapshotRejected -> NACK
        self._applied = True
        self.metrics.config_version.clear()
        self.metrics.config_version.labels(snapshot.version).set(1)
        self._dirty.set()

    # ---- enrollment -----------------------------------------------------------------
    def wanted(self) -> tuple[dict[str, tuple[pb.PodToRun, Pod]], set[PodRef], list[str]]:
        """Pods to capture now, their certificate refs, and why others cannot be yet."""
        wanted: dict[str, tuple[pb.PodToRun, Pod]] = {}
        refs: set[PodRef] = set()
        errors: list[str] = []
        namespaces = self.namespaces_watch.cache.objects
        for (ns, name), pod in sorted(self.pods_watch.cache.objects.items()):
            if not runnable(pod):
                continue
            spec = pod_spec(pod, namespaces.get(("", ns)),
                            self.config.trust_domain)
            if not spec.enrolled:
                continue
            found = self.locator.locate(spec.uid, container_ids(pod))
            if found is None:
                errors.append(f"{ns}/{name}: no process of pod uid {spec.uid} in "
                              f"{self.config.proc_root} yet (is hostPID set?)")
                continue
            refs.add(PodRef(ns, name, spec.service_account))
            wanted[f"{ns}/{name}"] = (spec, runtime_pod(pod, self.config.node, found))
        return wanted, refs, errors

    async def reconcile(self) -> None:
        """Capture every enrolled pod, certificate or not: one with no certificate yet
        (CA refused or away) has its connections refused until it arrives (never
        plaintext), named in status and retried on the next pass. Capture comes first:
        the kubelet already runs the app, and a CA that hangs must not leave it
        uncaptured for the length of a certificate request."""
        wanted, refs, errors = self.wanted()
        capture_errors = await self.enrollment.reconcile(wanted)
        missing = await obtain_all(self.certs, refs)
        for gone in self.cert_pods - refs:
            self.certs.remove_pod(gone)
        self.cert_pods = refs
        waiting = {f"{r.namespace}/{r.name}": why for r, why in missing.items()}
        log_waiting(self.waiting_for_certificate, waiting)
        self.waiting_for_certificate = waiting
        self.metrics.waiting_for_certificate.set(len(missing))
        errors += [f"{key}: waiting for its certificate, connections refused: {why}"
                   for key, why in sorted(self.waiting_for_certificate.items())]
        self.errors = errors + capture_errors
        self.reconciles += 1

    async def _reconcile_loop(self) -> None:
        me = asyncio.current_task()
        await self.pods_watch.synced.wait()
        await self.namespaces_watch.synced.wait()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=self.config.resync)
            self._dirty.clear()
            try:
                await self.reconcile()
            except Exception as e:  # one bad pass must not stop the agent
                log.exception("reconcile failed", error=str(e))
            if me is not None and me.cancelling():
                # Unenrolling waits for a pod's serving task with every exception
                # suppressed, our own cancellation included: honour it here.
                raise asyncio.CancelledError

    # ---- status ---------------------------------------------------------------------
    def ready(self) -> bool:
        return (self._applied and self.subscriber.connected and self.pods_watch.synced.is_set()
                and self.namespaces_watch.synced.is_set())

    def status(self) -> dict[str, Any]:
        return {
            "node": self.config.node, "mode": "kubernetes",
            "connected": self.subscriber.connected, "config_version": self.subscriber.version,
            "last_error": self.subscriber.last_error,
            "watches": {w.kind.kind: {"synced": w.synced.is_set(),
                                      "objects": len(w.cache.objects),
                                      "resourceVersion": w.cache.resource_version,
                                      "relists": w.cache.relists, "error": w.last_error}
                        for w in (self.pods_watch, self.namespaces_watch)},
            "bpf": self.redirector.status(),
            "enrolled_pods": self.enrollment.enrolled_keys(),
            "enrollment_errors": self.errors,
            "pods_waiting_for_certificate": [
                {"pod": key, "reason": why}
                for key, why in sorted(self.waiting_for_certificate.items())],
            "certificates": [dataclasses.asdict(c) for c in self.certs.status()],
        }

    # ---- lifecycle ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._connect()
        host, _, port = self.config.health_addr.rpartition(":")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]") or "0.0.0.0", int(port)))
        self.health_port = sock.getsockname()[1]
        server = await admin.serve_http(
            admin.AdminEndpoints(lambda: generate_latest(self.metrics.registry), self.status,
                                 self.ready, live=True), sock)
        log.info("node agent started", node=self.config.node, mode="kubernetes",
                 controller=self.config.controller, health=f"{host}:{self.health_port}")
        try:
            await run_until_stopped(
                stop, self.certs, [self.subscriber.run(), self.pods_watch.run(),
                                   self.namespaces_watch.run(), self._reconcile_loop()],
                self.config.drain_seconds)
        finally:
            await self.enrollment.drain(self.config.drain_seconds, keep_capture=True)
            server.close()
            await server.wait_closed()
            await self.channel.close(None)
            self.redirector.close()
            log.info("node agent stopped", node=self.config.node)

    def watches(self) -> tuple[Reflector, Reflector]:
        return self.pods_watch, self.namespaces_watch

"""Enrollment: the pods of this node that the mesh captures, kept in step with config.

Order matters for "no lapse": to enroll, the proxy's listeners in the pod are opened
and registered first, then the BPF maps start steering traffic to them; to unenroll,
capture stops first, then the listeners close. Unenrolling never touches the app.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import structlog

from ebpf.enrollment import EnrolledPod
from ebpf.redirector import Redirector
from mesh.api import config_pb2 as pb
from mesh.runtime import Pod
from nodeagent.listener_store import Listeners
from nodeagent.proxy.handlers import ProxyContext, serve_pod
from nodeagent.proxy.pod_listeners import PodEndpoint, PodListeners
from nodeagent.workers import WorkerPool

log = structlog.get_logger("nodeagent.enrollment")


@dataclass
class Enrolled:
    endpoint: PodEndpoint
    bpf: EnrolledPod
    listeners: PodListeners
    serving: asyncio.Task[None]


def bpf_record(spec: pb.PodToRun, pod: Pod) -> EnrolledPod:
    return EnrolledPod(
        name=f"{spec.namespace}/{spec.name}", netns=pod.netns, cgroup_path=pod.cgroup_path,
        cgroup_id=pod.cgroup_id, ips=(str(pod.ip), str(pod.ip6)),
        outbound_excluded_ports=tuple(spec.excluded_ports),
        inbound_excluded_ports=tuple(spec.excluded_ports),
    )


@dataclass
class EnrollmentController:
    redirector: Redirector
    ctx: ProxyContext
    listeners: Listeners = field(default_factory=lambda: Listeners(None))
    workers: WorkerPool | None = None  # more processes serving the same listeners
    pods: dict[str, Enrolled] = field(default_factory=dict)
    connections: set[asyncio.Task[None]] = field(default_factory=set)

    async def reconcile(self, wanted: dict[str, tuple[pb.PodToRun, Pod]]) -> list[str]:
        """Enroll/unenroll so exactly `wanted` (key -> (spec, local pod)) is captured.
        Returns error messages for pods that could not be enrolled (the rest proceed)."""
        errors: list[str] = []
        for key in [k for k in self.pods if k not in wanted]:
            await self.unenroll(key)
        for key, (spec, pod) in wanted.items():
            current = self.pods.get(key)
            if current is not None and current.endpoint.uid == spec.uid:
                record = bpf_record(spec, pod)
                if record != current.bpf:  # exclusions changed: update the map in place
                    self.redirector.enroll(record)
                    current.bpf = record
                continue
            if current is not None:
                await self.unenroll(key)
            try:
                self.enroll(spec, pod)
            except Exception as e:  # one pod's failure never blocks the others
                log.error("enrollment failed", pod=key, error=str(e))
                errors.append(f"{key}: {e}")
        self.listeners.close_unclaimed()
        self.ctx.metrics.enrolled_pods.set(len(self.pods))
        return errors

    def enroll(self, spec: pb.PodToRun, pod: Pod) -> None:
        endpoint = PodEndpoint(spec.namespace, spec.name, spec.uid, pod.netns, str(pod.ip),
                               str(pod.ip6), spec.identity)
        listeners = PodListeners.bind(pod.netns, f"{endpoint.key}/{endpoint.uid}",
                                      self.listeners)
        try:
            for sock in listeners.inbound_sockets:
                self.redirector.register_inbound_listener(pod.netns, sock)
            serving = asyncio.create_task(
                serve_pod(self.ctx, endpoint, listeners, self.connections,
                          self.workers.dispatch if self.workers else None),
                name=f"serve {endpoint.key}")
            record = bpf_record(spec, pod)
            self.redirector.enroll(record)
        except BaseException:
            listeners.close()
            raise
        self.pods[endpoint.key] = Enrolled(endpoint, record, listeners, serving)
        if self.workers is not None:
            self.workers.add_pod(endpoint)
        log.info("pod captured", pod=endpoint.key, ip=endpoint.ip, identity=endpoint.identity)

    async def _stop_serving(self, enrolled: Enrolled) -> None:
        if self.workers is not None:
            self.workers.remove_pod(enrolled.endpoint.key)
        enrolled.serving.cancel()
        with contextlib.suppress(BaseException):
            await enrolled.serving
        enrolled.listeners.close()

    async def unenroll(self, key: str) -> None:
        enrolled = self.pods.pop(key, None)
        if enrolled is None:
            return
        for step in (lambda: self.redirector.unenroll(enrolled.bpf),
                     lambda: self.redirector.unregister_inbound_listener(enrolled.endpoint.netns)):
            try:
                step()
            except Exception as e:  # the pod may be gone already: keep releasing
                log.warning("unenroll step failed", pod=key, error=str(e))
        await self._stop_serving(enrolled)
        for listener_key in enrolled.listeners.keys:
            self.listeners.forget(listener_key)
        log.info("pod released", pod=key)

    async def drain(self, deadline: float, keep_capture: bool) -> None:
        """Stop accepting, let connections finish up to `deadline` seconds, then stop.
        With keep_capture the BPF state stays in force (an agent restart)."""
        leaving = list(self.pods)
        if not keep_capture:
            for key in leaving:
                await self.unenroll(key)
            return
        pods = [self.pods.pop(key) for key in leaving]
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline
        conns = set(self.connections)
        # All pods at once: each HBONE server waits up to `deadline` for its tunnels.
        await asyncio.gather(*(self._stop_serving(p) for p in pods),
                             *([asyncio.wait(conns, timeout=deadline)] if conns else []))
        # Connections accepted while the listeners were stopping get the same deadline.
        late = set(self.connections) - conns
        if late and until > loop.time():
            await asyncio.wait(late, timeout=until - loop.time())
        for task in self.connections:
            task.cancel()

    def enrolled_keys(self) -> list[str]:
        return sorted(self.pods)

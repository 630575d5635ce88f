"""The kubelet + CNI role of the node agent in local mode.

Given the pods the controller scheduled on this node, make the node match: create
missing pods (netns, veth, IP, cgroup) through the local runtime, run their
containers as processes, restart crashed ones with backoff, delete pods that are no
longer wanted (or whose uid changed), and report every pod's IP and phase.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import structlog

from mesh.api import config_pb2 as pb
from mesh.backoff import Backoff
from mesh.config.annotations import GATEWAY_NAME_LABEL
from mesh.runtime import LocalRuntime, Pod, PodNotFound
from mesh.runtime.builder import build_in_child

log = structlog.get_logger("nodeagent.pods")

RESTART_BACKOFF = Backoff(initial=1.0, maximum=30.0, jitter=0.0)
"""A crashed container restarts after 1, 2, 4 ... up to 30 s (as kubelet's CrashLoopBackOff:
deterministic, one process at a time, nothing to spread out)."""


@dataclass
class ContainerProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    last_exit: int | None = None


@dataclass
class RunningPod:
    spec: pb.PodToRun
    pod: Pod
    containers: list[ContainerProcess] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.spec.namespace}/{self.spec.name}"

    def phase(self) -> pb.PodPhase.ValueType:
        if not self.containers:
            return pb.RUNNING
        alive = [c.proc is not None and c.proc.poll() is None for c in self.containers]
        return pb.RUNNING if all(alive) else pb.PENDING


class PodSupervisor:
    """Owns the pods of one local node. Not thread-safe: one caller (the agent loop)."""

    def __init__(self, runtime: LocalRuntime, node: str, state_dir: Path,
                 control_plane_env: Mapping[str, str] | None = None,
                 may_start: Callable[[pb.PodToRun], bool] = lambda spec: True) -> None:
        """`may_start` holds a pod's containers back: the agent starts an enrolled
        pod's app only once the pod is captured, so it never talks uncaptured."""
        self.runtime = runtime
        self.may_start = may_start
        self.control_plane_env = dict(control_plane_env or {})
        self.node = node
        self.log_dir = state_dir / "logs"
        self.uid_dir = state_dir / "pod-uids"
        self.uid_dir.mkdir(parents=True, exist_ok=True)
        self.pods: dict[str, RunningPod] = {}

    def reconcile(self, wanted: Sequence[pb.PodToRun], hosts: Mapping[str, str]) -> None:
        """Make the node's pods match `wanted`; adopt pods a previous agent created."""
        wanted_by_key = {f"{p.namespace}/{p.name}": p for p in wanted}
        for pod in self.runtime.list_pods(node=self.node):
            spec = wanted_by_key.get(pod.key)
            if spec is None or self._uid_on_disk(pod) not in ("", spec.uid):
                self._delete(pod.namespace, pod.name)
        for key, spec in wanted_by_key.items():
            running = self.pods.get(key)
            if running is not None and running.spec.uid != spec.uid:
                self._delete(spec.namespace, spec.name)
        missing = [spec for key, spec in wanted_by_key.items() if key not in self.pods]
        if missing:
            # Netlink work in a short-lived child: the agent never loads pyroute2.
            _, pods = build_in_child(self.runtime, self.node,
                                     [(s.namespace, s.name) for s in missing])
            for spec, pod in zip(missing, pods, strict=True):
                self._start_pod(spec, pod)
        for key, spec in wanted_by_key.items():
            running = self.pods[key]
            running.spec = spec
            self.runtime.set_hosts(running.pod, hosts)
        self.tick()

    def tick(self) -> None:
        """Start containers that are due (first start or restart after backoff)."""
        now = time.monotonic()
        for running in self.pods.values():
            if not self.may_start(running.spec):
                continue
            for c in running.containers:
                if c.proc is not None and c.proc.poll() is None:
                    continue
                if c.proc is not None and c.last_exit is None:
                    c.last_exit = c.proc.returncode
                    c.restarts += 1
                    backoff = RESTART_BACKOFF.delay(c.restarts - 1)
                    c.next_start = now + backoff
                    log.warning("container exited", pod=running.key, container=c.name,
                                code=c.last_exit, restart_in=backoff)
                if now >= c.next_start:
                    self._start(running, c)

    def statuses(self) -> list[pb.PodStatus]:
        return [
            pb.PodStatus(namespace=r.spec.namespace, name=r.spec.name, uid=r.spec.uid,
                         pod_ip=str(r.pod.ip), pod_ipv6=str(r.pod.ip6), phase=r.phase())
            for r in self.pods.values()
        ]

    def running(self, namespace: str, name: str) -> RunningPod | None:
        return self.pods.get(f"{namespace}/{name}")

    def stop_all(self) -> None:
        """Stop container processes but keep the pods (their netns survive the agent)."""
        for running in self.pods.values():
            for c in running.containers:
                if c.proc is not None and c.proc.poll() is None:
                    c.proc.terminate()

    # ---- internals ---------------------------------------------------------------
    def _uid_file(self, namespace: str, name: str) -> Path:
        """The uid a pod was created for, kept so a restarted agent can adopt it."""
        return self.uid_dir / f"{namespace}.{name}"

    def _uid_on_disk(self, pod: Pod) -> str:
        try:
            return self._uid_file(pod.namespace, pod.name).read_text()
        except FileNotFoundError:
            return ""

    def _start_pod(self, spec: pb.PodToRun, pod: Pod) -> RunningPod:
        """Take over a pod just built (or found) for `spec`: its containers start on the
        next tick, unless a previous agent already runs them."""
        marker = self._uid_file(pod.namespace, pod.name)
        adopted = marker.exists() and marker.read_text() == spec.uid
        marker.write_text(spec.uid)
        containers = [
            ContainerProcess(
                name=c.name or f"c{i}", argv=list(c.command),
                env={e.name: e.value for e in c.env}, cwd=c.working_dir or None)
            for i, c in enumerate(spec.containers) if c.command
        ]
        running = RunningPod(spec, pod, containers)
        if adopted and pod.cgroup_path.exists() and (pod.cgroup_path / "cgroup.procs").read_text():
            # A previous agent started these processes; they live on in the pod's cgroup.
            running.containers = []
            log.info("pod adopted", pod=running.key, ip=str(pod.ip))
        self.pods[running.key] = running
        log.info("pod started", pod=running.key, ip=str(pod.ip), containers=len(containers))
        return running

    def _start(self, running: RunningPod, c: ContainerProcess) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logfile: IO[Any] = open(  # noqa: SIM115 - handed to the child, closed below
            self.log_dir / f"{running.spec.namespace}.{running.spec.name}.{c.name}.log", "ab")
        # The agent's own bin dir first, so mesh commands (ambient-waypoint) resolve.
        path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        env = {"PATH": path, "POD_NAME": running.spec.name,
               "POD_NAMESPACE": running.spec.namespace, "POD_IP": str(running.pod.ip),
               "NODE_NAME": self.node, **c.env}
        if GATEWAY_NAME_LABEL in running.spec.labels:
            # Only waypoint pods, which are mesh components, get the control plane.
            env.update(self.control_plane_env)
        try:
            c.proc = self.runtime.spawn(running.pod, c.argv, stdout=logfile,
                                        stderr=subprocess.STDOUT, env=env, cwd=c.cwd)
        except OSError as e:
            c.last_exit = None
            c.restarts += 1
            c.next_start = time.monotonic() + RESTART_BACKOFF.delay(c.restarts - 1)
            log.error("container failed to start", pod=running.key, container=c.name,
                      error=str(e))
        else:
            c.last_exit = None
        finally:
            logfile.close()

    def _delete(self, namespace: str, name: str) -> None:
        running = self.pods.pop(f"{namespace}/{name}", None)
        if running is not None:
            for c in running.containers:
                if c.proc is not None:
                    c.proc.kill()
                    c.proc.wait()
        self._uid_file(namespace, name).unlink(missing_ok=True)
        try:
            self.runtime.delete_pod(namespace, name)
        except PodNotFound:
            return

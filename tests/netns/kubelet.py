"""Pods dressed as kubelet-run ones, for the node agent's Kubernetes mode in netns
tests: a real local pod (netns, veth, IP) whose app runs in a kubelet-style cgroup
`pod<uid>/<container id>`, the Pod object the API server would hold for it, the
node agent's pod-bound token, and a client that connects from inside a pod (its netns
and container cgroup, which is what capture matches). The fixtures are in
tests/netns/conftest.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from mesh.runtime import LocalRuntime, Pod
from mesh.runtime import cgroups as cg
from tests.fakes.kube_apiserver import FakeApiServer

# The app of every kubelet pod: an echo server on 8080.
SERVER = (
    "import socket, sys\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 8080)); s.listen(16)\n"
    "while True:\n"
    "    c, _ = s.accept(); data = c.recv(100); c.sendall(b'echo:' + data); c.close()\n")


@dataclass
class KubeletPod:
    """A local pod dressed as a kubelet-run one."""

    local: Pod
    uid: str
    container_id: str
    proc: subprocess.Popen[bytes]
    cgroup: Path

    def api_object(self, sa: str = "default") -> dict[str, Any]:
        return {"kind": "Pod", "metadata": {"name": self.local.name,
                                            "namespace": self.local.namespace, "uid": self.uid},
                "spec": {"nodeName": self.local.node, "serviceAccountName": sa,
                         "containers": [{"name": "app", "image": "python"}]},
                "status": {"phase": "Running", "podIP": str(self.local.ip),
                           "podIPs": [{"ip": str(self.local.ip)}],
                           "conditions": [{"type": "Ready", "status": "True"}],
                           "containerStatuses": [{"name": "app", "containerID":
                                                  f"containerd://{self.container_id}"}]}}


class Kubelet:
    def __init__(self, runtime: LocalRuntime, kubepods: Path) -> None:
        self.runtime = runtime
        self.kubepods = kubepods
        self.pods: list[KubeletPod] = []

    def start(self, node: str, namespace: str, name: str) -> KubeletPod:
        local = self.runtime.create_pod(node, namespace, name)
        uid, cid = str(uuid.uuid4()), uuid.uuid4().hex * 2
        cgroup = self.kubepods / f"pod{uid}" / cid
        cgroup.mkdir(parents=True)
        # The shell joins the cgroup itself, then becomes the app in the pod's netns (no
        # preexec_fn: forking with one in a process running gRPC threads can crash).
        netns = self.runtime.pod_netns(namespace, name)
        proc = subprocess.Popen(["sh", "-c", f'echo $$ > {cgroup / "cgroup.procs"} && exec ip '
                                 f'netns exec {netns} {sys.executable} -c "$0"', SERVER],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pod = KubeletPod(local, uid, cid, proc, cgroup)
        self.pods.append(pod)
        return pod

    def stop_all(self) -> None:
        for pod in self.pods:
            pod.proc.kill()
            pod.proc.wait()
        cg.remove_tree(self.kubepods)


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    with anyio.fail_after(timeout):
        while not cond():
            await asyncio.sleep(0.05)


def call(runtime: LocalRuntime, src: KubeletPod, dst: Pod) -> str:
    """Connect from inside `src` (its netns and its container cgroup, which is what
    capture matches). The shell joins the cgroup itself: preexec_fn in a process with
    gRPC threads can crash the forked child."""
    code = (f"import socket; s = socket.create_connection(('{dst.ip}', 8080), timeout=5); "
            "s.sendall(b'hello'); print(s.recv(100).decode())")
    netns = runtime.pod_netns(src.local.namespace, src.local.name)
    script = (f'echo $$ > {src.cgroup / "cgroup.procs"} && exec ip netns exec {netns} '
              f'{sys.executable} -c "{code}"')
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=20)
    return out.stdout.strip() or out.stderr.strip()


def agent_token(server: FakeApiServer, tmp: Path) -> Path:
    """The node agent's pod (hostNetwork, on n1) and a token bound to it, as a
    projected service-account token is; returns the token file."""
    server.create({"kind": "Namespace", "metadata": {"name": "ambient-system"}})
    agent_pod = server.create({"kind": "Pod", "metadata": {
        "name": "ambient-nodeagent-x", "namespace": "ambient-system"},
        "spec": {"nodeName": "n1", "serviceAccountName": "ambient-nodeagent", "hostNetwork": True,
                 "containers": [{"name": "agent", "image": "ambient-mesh"}]},
        "status": {"phase": "Running", "podIP": "192.0.2.1"}})
    server.add_pod_token("agent-token", agent_pod)  # name and uid, as projected tokens
    token = tmp / "token"
    token.write_text("agent-token\n")
    return token

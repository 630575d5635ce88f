"""The node agent in Kubernetes mode, for real: the fake API server (real client
library, real wire protocol) says which pods run on node n1; real local pods (netns,
veth, IP, a process moved into a kubelet-style cgroup `pod<uid>/<container id>`) stand
in for what the kubelet would have made; the controller runs in Kubernetes mode
(TokenReview, CA). The agent must find each pod's netns and cgroup through /proc,
enroll on the namespace annotation (pods created before and after it started),
carry traffic over HBONE, and unenroll on deletion and on opt-out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from controller.app import ControllerSettings
from controller.kube.serve import KubeSettings, kubernetes_controller
from mesh.runtime import LocalRuntime, Pod
from mesh.runtime import cgroups as cg
from nodeagent.k8s_agent import KubeAgentConfig, KubeNodeAgent
from tests.fakes.kube_apiserver import FakeApiServer
from tests.fakes.kube_client import api_client

pytestmark = [pytest.mark.netns, pytest.mark.anyio]
NODEAGENT = "system:serviceaccount:ambient-system:ambient-nodeagent"
SERVER = (
    "import socket, sys\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 8080)); s.listen(16)\n"
    "while True:\n"
    "    c, _ = s.accept(); data = c.recv(100); c.sendall(b'echo:' + data); c.close()\n")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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


@pytest.fixture
def kubelet(runtime: LocalRuntime, cluster_name: str) -> Iterator[Kubelet]:
    runtime.create_node("n1")
    kubepods = cg.cgroup2_root() / f"{cluster_name}-kubepods"
    kubepods.mkdir()
    k = Kubelet(runtime, kubepods)
    try:
        yield k
    finally:
        k.stop_all()


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    s = FakeApiServer(bookmark_interval=0.2)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    with anyio.fail_after(timeout):
        while not cond():
            await asyncio.sleep(0.05)


def listeners(runtime: LocalRuntime, pod: Pod) -> set[int]:
    out = subprocess.run(["ip", "netns", "exec", runtime.pod_netns(pod.namespace, pod.name),
                          "ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


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


@contextlib.asynccontextmanager
async def mesh(server: FakeApiServer, tmp: Path, cluster: str, kubepods: Path
               ) -> AsyncIterator[KubeNodeAgent]:
    server.create({"kind": "Namespace", "metadata": {"name": "ambient-system"}})
    agent_pod = server.create({"kind": "Pod", "metadata": {
        "name": "ambient-nodeagent-x", "namespace": "ambient-system"},
        "spec": {"nodeName": "n1", "serviceAccountName": "ambient-nodeagent", "hostNetwork": True,
                 "containers": [{"name": "agent", "image": "ambient-mesh"}]},
        "status": {"phase": "Running", "podIP": "192.0.2.1"}})
    server.add_pod_token("agent-token", agent_pod)  # name and uid, as projected tokens
    token = tmp / "token"
    token.write_text("agent-token\n")
    settings = ControllerSettings(config_dir=tmp / "c" / "config", state_dir=tmp / "c",
                                  grpc_addr="127.0.0.1:0", admin_addr="127.0.0.1:0",
                                  debounce=0.02)
    controller_api, agent_api = api_client(server), api_client(server)
    try:
        async with kubernetes_controller(settings, KubeSettings(manage_waypoints=False),
                                         api=controller_api) as (controller, _):
            agent = KubeNodeAgent(KubeAgentConfig(
                node="n1", controller=f"127.0.0.1:{controller.grpc_port}", token_file=token,
                attach_cgroup=kubepods, pin_name=cluster, health_addr="127.0.0.1:0",
                resync=0.5, drain_seconds=0.5), agent_api)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:
                await until(lambda: hasattr(agent, "subscriber") and agent.ready(), 20)
                yield agent
            finally:
                stop.set()
                await asyncio.wait_for(task, 20)
                with contextlib.suppress(Exception):
                    agent.redirector.uninstall()
    finally:
        await controller_api.close()
        await agent_api.close()


def opened_connections(agent: KubeNodeAgent) -> float:
    return sum(s.value for m in agent.metrics.registry.collect()
               if m.name == "istio_tcp_connections_opened" for s in m.samples
               if s.name.endswith("_total"))


async def test_enrolls_on_namespace_annotation_before_and_after_start(
        server: FakeApiServer, kubelet: Kubelet, runtime: LocalRuntime, tmp_path: Path,
        cluster_name: str) -> None:
    server.create({"kind": "Namespace", "metadata": {"name": "demo"}})
    early = await asyncio.to_thread(kubelet.start, "n1", "demo", "early")
    server.create(early.api_object(sa="early"))
    async with mesh(server, tmp_path, cluster_name, kubelet.kubepods) as agent:
        await until(lambda: agent.reconciles > 0)
        assert agent.enrollment.enrolled_keys() == []
        assert listeners(runtime, early.local) == {8080}
        # The DaemonSet's probes and `ambientctl status` read the health port.
        health = f"http://127.0.0.1:{agent.health_port}"
        for path, expected in (("/healthz/live", "live\n"), ("/healthz/ready", "ready\n")):
            body = await asyncio.to_thread(
                lambda p=path: urllib.request.urlopen(health + p, timeout=5).read().decode())
            assert body == expected, (path, body)
        status = await asyncio.to_thread(
            lambda: json.loads(urllib.request.urlopen(health + "/status", timeout=5).read()))
        assert status["mode"] == "kubernetes" and status["node"] == "n1", status

        ns = server.get("Namespace", "", "demo")
        assert ns is not None
        ns["metadata"]["annotations"] = {"ambientmesh.io/dataplane-mode": "ambient"}
        server.update(ns)
        await until(lambda: agent.enrollment.enrolled_keys() == ["demo/early"], 15)
        assert {15001, 15006, 15008} <= listeners(runtime, early.local)
        enrolled = agent.enrollment.pods["demo/early"]
        assert enrolled.bpf.cgroup_path == early.cgroup.parent  # the pod-level cgroup
        assert enrolled.endpoint.identity == "spiffe://cluster.local/ns/demo/sa/early"
        assert any(c.identity == "spiffe://cluster.local/ns/demo/sa/early"
                   for c in agent.certs.status())

        # A pod created after the agent started:
        late = await asyncio.to_thread(kubelet.start, "n1", "demo", "late")
        server.create(late.api_object(sa="late"))
        await until(lambda: agent.enrollment.enrolled_keys() == ["demo/early", "demo/late"], 15)

        # Traffic between the two enrolled pods goes through the node proxy (HBONE).
        before = opened_connections(agent)
        answer = await asyncio.to_thread(call, runtime, late, early.local)
        assert answer == "echo:hello"
        await until(lambda: opened_connections(agent) > before, 5)

        server.delete("Pod", "demo", "early")
        await until(lambda: agent.enrollment.enrolled_keys() == ["demo/late"], 10)
        # Capture stops first, then the listeners close.
        await until(lambda: not {15001, 15006, 15008} & listeners(runtime, early.local), 5)

        ns = server.get("Namespace", "", "demo")
        assert ns is not None
        ns["metadata"]["annotations"] = {}
        server.update(ns)
        await until(lambda: agent.enrollment.enrolled_keys() == [], 10)
        # Unenrolled: plain networking again, app untouched.
        answer = await asyncio.to_thread(call, runtime, late, early.local)
        assert answer == "echo:hello"


async def test_pod_opt_out_and_host_network_pods_are_left_alone(
        server: FakeApiServer, kubelet: Kubelet, tmp_path: Path, cluster_name: str) -> None:
    server.create({"kind": "Namespace", "metadata": {
        "name": "demo", "annotations": {"ambientmesh.io/dataplane-mode": "ambient"}}})
    inside = await asyncio.to_thread(kubelet.start, "n1", "demo", "inside")
    out = await asyncio.to_thread(kubelet.start, "n1", "demo", "out")
    server.create(inside.api_object())
    opted_out = out.api_object()
    opted_out["metadata"]["annotations"] = {"ambientmesh.io/dataplane-mode": "none"}
    server.create(opted_out)
    elsewhere = await asyncio.to_thread(kubelet.start, "n1", "demo", "elsewhere")
    other_node = elsewhere.api_object()
    other_node["spec"]["nodeName"] = "n2"  # not ours: never watched
    server.create(other_node)
    async with mesh(server, tmp_path, cluster_name, kubelet.kubepods) as agent:
        await until(lambda: agent.enrollment.enrolled_keys() == ["demo/inside"], 15)
        await asyncio.sleep(0.5)
        assert agent.enrollment.enrolled_keys() == ["demo/inside"]
        assert set(agent.pods_watch.cache.objects) == {("demo", "inside"), ("demo", "out"),
                                                 ("ambient-system", "ambient-nodeagent-x")}

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
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.app import ControllerSettings
from controller.kube.serve import KubeSettings, kubernetes_controller
from mesh.runtime import LocalRuntime, Pod
from nodeagent.k8s_agent import KubeAgentConfig, KubeNodeAgent
from tests.fakes.kube_apiserver import FakeApiServer
from tests.fakes.kube_client import api_client
from tests.netns.kubelet import Kubelet, agent_token, call, until

pytestmark = [pytest.mark.netns, pytest.mark.anyio]
NODEAGENT = "system:serviceaccount:ambient-system:ambient-nodeagent"














def listeners(runtime: LocalRuntime, pod: Pod) -> set[int]:
    out = subprocess.run(["ip", "netns", "exec", runtime.pod_netns(pod.namespace, pod.name),
                          "ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}




@contextlib.asynccontextmanager
async def mesh(server: FakeApiServer, tmp: Path, cluster: str, kubepods: Path
               ) -> AsyncIterator[KubeNodeAgent]:
    token = agent_token(server, tmp)
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

        def get(url: str) -> str:
            with urllib.request.urlopen(url, timeout=5) as r:
                return str(r.read().decode())

        for path, expected in (("/healthz/live", "live\n"), ("/healthz/ready", "ready\n")):
            body = await asyncio.to_thread(get, health + path)
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

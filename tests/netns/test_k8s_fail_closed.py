"""Kubernetes mode, CA unreachable (controller stopped) when a new pod starts: the
pod is captured anyway and refused both ways until its certificate arrives
(issue 20 finding 5). It used to stay uncaptured: its outbound left in plaintext and
its inbound skipped the namespace's STRICT PeerAuthentication.

Real parts: the fake API server (real client, real wire protocol), real local pods
dressed as kubelet-run ones (tests/netns/kubelet.py), the controller in
Kubernetes mode and a node agent with real eBPF capture. The controller is stopped
and started again on the same port and state (same CA root)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controller.app import ControllerSettings
from controller.kube.serve import KubeSettings, kubernetes_controller
from nodeagent.k8s_agent import KubeAgentConfig, KubeNodeAgent
from tests.e2e.mesh_harness import free_port
from tests.fakes.kube_apiserver import FakeApiServer
from tests.fakes.kube_client import api_client
from tests.netns.kubelet import Kubelet, agent_token, call, until

pytestmark = [pytest.mark.netns, pytest.mark.anyio]


def refusals(agent: KubeNodeAgent, cause: str) -> float:
    return sum(s.value for m in agent.metrics.registry.collect()
               if m.name == "ambient_connections_refused" for s in m.samples
               if s.name.endswith("_total") and s.labels.get("cause") == cause)


@contextlib.asynccontextmanager
async def controller(server: FakeApiServer, settings: ControllerSettings
                     ) -> AsyncIterator[None]:
    api = api_client(server)
    try:
        async with kubernetes_controller(settings, KubeSettings(manage_waypoints=False),
                                         api=api):
            yield
    finally:
        await api.close()


def objects(server: FakeApiServer) -> None:
    server.create({"kind": "Namespace", "metadata": {
        "name": "demo", "annotations": {"ambientmesh.io/dataplane-mode": "ambient"}}})
    server.create({"kind": "Namespace", "metadata": {"name": "legacy"}})
    server.create({"apiVersion": "ambientmesh.io/v1alpha1", "kind": "PeerAuthentication",
                   "metadata": {"name": "default", "namespace": "demo"},
                   "spec": {"mtls": {"mode": "STRICT"}}})


async def test_new_pod_with_ca_unreachable_is_captured_and_refused_both_ways(
        server: FakeApiServer, kubelet: Kubelet, tmp_path: Path, cluster_name: str) -> None:
    objects(server)
    early = await asyncio.to_thread(kubelet.start, "n1", "demo", "early")
    server.create(early.api_object(sa="early"))
    outsider = await asyncio.to_thread(kubelet.start, "n1", "legacy", "outsider")
    server.create(outsider.api_object())
    settings = ControllerSettings(config_dir=tmp_path / "c" / "config", state_dir=tmp_path / "c",
                                  grpc_addr=f"127.0.0.1:{free_port()}",
                                  admin_addr="127.0.0.1:0", debounce=0.02)
    agent_api = api_client(server)
    agent = KubeNodeAgent(KubeAgentConfig(
        node="n1", controller=settings.grpc_addr, token_file=agent_token(server, tmp_path),
        attach_cgroup=kubelet.kubepods, pin_name=cluster_name, health_addr="127.0.0.1:0",
        resync=0.3, drain_seconds=0.5), agent_api)
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    try:
        async with controller(server, settings):
            task = asyncio.create_task(agent.run(stop))
            await until(lambda: hasattr(agent, "subscriber") and agent.ready(), 60)
            await until(lambda: agent.enrollment.enrolled_keys() == ["demo/early"], 15)
            await until(lambda: any(c.serial for c in agent.certs.status()), 15)
            # Baseline: STRICT refuses the outsider's plaintext to a pod with a cert.
            assert "echo:" not in await asyncio.to_thread(call, kubelet.runtime, outsider,
                                                          early.local)
        # The controller (and so the CA) is gone; the kubelet starts a new pod.
        fresh = await asyncio.to_thread(kubelet.start, "n1", "demo", "fresh")
        server.create(fresh.api_object(sa="fresh"))
        await until(lambda: any(e.startswith("demo/fresh:") and "certificate" in e
                                for e in agent.errors), 30)
        status: dict[str, Any] = agent.status()
        print("agent errors with the CA away:", status["enrollment_errors"])
        assert "demo/fresh" in status["enrolled_pods"], "a pod with no certificate stayed " \
            "uncaptured: its traffic bypasses the mesh"
        assert [w["pod"] for w in status["pods_waiting_for_certificate"]] == ["demo/fresh"]

        # Outbound: refused (reset), not sent in plaintext to a plaintext server.
        out = await asyncio.to_thread(call, kubelet.runtime, fresh, outsider.local)
        assert "echo:" not in out, f"fresh pod's outbound left in plaintext: {out}"
        assert "Reset" in out or "refused" in out.lower(), out
        # Inbound plaintext to it: refused, as its namespace's STRICT requires.
        inbound = await asyncio.to_thread(call, kubelet.runtime, outsider, fresh.local)
        assert "echo:" not in inbound, f"plaintext reached the STRICT pod: {inbound}"
        assert refusals(agent, "certificate_pending") >= 1
        assert refusals(agent, "certificate_pending") + refusals(agent, "policy_unknown") >= 2

        # The controller returns (same port, same CA): the certificate arrives and the
        # pod is served; STRICT still refuses plaintext.
        async with controller(server, dataclasses.replace(settings)):
            await until(lambda: not agent.waiting_for_certificate, 30)
            def policy_known() -> bool:
                wl = agent.ctx.workload_of(agent.enrollment.pods["demo/fresh"].endpoint)
                return wl is not None and wl.uid in agent.ctx.state.policies
            await until(policy_known, 15)
            answer = await asyncio.to_thread(call, kubelet.runtime, fresh, early.local)
            assert answer == "echo:hello", answer
            assert "echo:" not in await asyncio.to_thread(call, kubelet.runtime, outsider,
                                                          fresh.local)
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 20)
        with contextlib.suppress(Exception):
            agent.redirector.uninstall()
        await agent_api.close()

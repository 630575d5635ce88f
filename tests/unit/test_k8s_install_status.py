"""`ambientctl install --status KUBECONFIG` (what `status --kubeconfig` shows): read the
installed mesh from the API server with the real client, via a real kubeconfig file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner

from ambientctl.commands.install import command, gather_cluster
from tests.fakes.kube_apiserver import FakeApiServer
from tests.fakes.kube_client import kubeconfig

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def structlog_defaults() -> Iterator[None]:
    """The CLI configures structlog for the process (cached loggers); put the defaults
    back so later tests' capture_logs still sees their events."""
    yield
    structlog.reset_defaults()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[FakeApiServer]:
    s = FakeApiServer()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def install(server: FakeApiServer, ready_agents: int) -> None:
    server.create({"kind": "Namespace", "metadata": {"name": "ambient-system"}})
    server.create({"kind": "Namespace", "metadata": {
        "name": "demo", "annotations": {"ambientmesh.io/dataplane-mode": "ambient"}}})
    server.create({"kind": "Namespace", "metadata": {
        "name": "shop", "labels": {"ambientmesh.io/dataplane-mode": "ambient"}}})
    server.create({"kind": "Namespace", "metadata": {"name": "legacy"}})
    server.create({"kind": "Deployment", "metadata": {"name": "ambient-controller",
                                                      "namespace": "ambient-system"},
                   "spec": {"replicas": 2},
                   "status": {"readyReplicas": 2, "updatedReplicas": 2}})
    server.create({"kind": "DaemonSet", "metadata": {"name": "ambient-nodeagent",
                                                     "namespace": "ambient-system"},
                   "status": {"desiredNumberScheduled": 2, "numberReady": ready_agents,
                              "updatedNumberScheduled": 2}})
    for i, node in enumerate(("kind-worker", "kind-worker2")):
        server.create({"kind": "Pod", "metadata": {
            "name": f"ambient-nodeagent-{i}", "namespace": "ambient-system",
            "labels": {"app.kubernetes.io/name": "ambient-nodeagent"}},
            "spec": {"nodeName": node},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True" if i < ready_agents else "False"}]}})
    server.create({"kind": "Secret", "metadata": {"name": "ambient-ca",
                                                  "namespace": "ambient-system"}, "data": {}})


async def test_healthy_cluster(server: FakeApiServer, tmp_path: Path) -> None:
    install(server, ready_agents=2)
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(kubeconfig(server))
    report = await gather_cluster(cfg)
    assert report["healthy"], report
    assert report["enrolledNamespaces"] == ["demo", "shop"]
    assert [a["node"] for a in report["nodeAgents"]] == ["kind-worker", "kind-worker2"]


async def test_unready_agent_and_waypoint_are_problems(server: FakeApiServer,
                                                       tmp_path: Path) -> None:
    install(server, ready_agents=1)
    server.create({"kind": "Gateway", "apiVersion": "gateway.networking.k8s.io/v1",
                   "metadata": {"name": "waypoint", "namespace": "demo"},
                   "spec": {"gatewayClassName": "ambient-waypoint"}})
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(kubeconfig(server))

    def run() -> Any:
        return CliRunner().invoke(command, ["--status", str(cfg), "-o", "json"])

    result = await asyncio.to_thread(run)
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    bad = {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}
    assert bad == {"node agents": "1/2 nodes ready, 2 up to date",
                   "waypoint demo/waypoint": "not installed (ambientctl install | kubectl "
                                             "apply -f -)"}
    table = await asyncio.to_thread(
        lambda: CliRunner().invoke(command, ["--status", str(cfg)]))
    assert "node agents" in table.output and "enrolled namespaces: demo, shop" in table.output


async def test_unreachable_cluster_says_so(tmp_path: Path) -> None:
    cfg = tmp_path / "kubeconfig"
    cfg.write_text("apiVersion: v1\nkind: Config\ncurrent-context: x\nclusters:\n- name: x\n"
                   "  cluster: {server: 'http://127.0.0.1:9'}\nusers:\n- name: x\n  user: "
                   "{token: t}\ncontexts:\n- name: x\n  context: {cluster: x, user: x}\n")
    result = await asyncio.to_thread(lambda: CliRunner().invoke(command, ["--status", str(cfg)]))
    assert result.exit_code != 0
    assert "cannot reach the API server" in str(result.exception) + result.output


async def test_status_kubeconfig_is_the_same_report(server: FakeApiServer,
                                                    tmp_path: Path) -> None:
    from ambientctl.cli import cli

    install(server, ready_agents=2)
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(kubeconfig(server))
    result = await asyncio.to_thread(lambda: CliRunner().invoke(
        cli, ["status", "--kubeconfig", str(cfg), "-o", "json"]))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["healthy"] is True

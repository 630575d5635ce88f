"""The whole local mesh driven through the CLI, as a user would: `up` (twice),
status, get, exec, explain, certs, metrics, demo traffic, a node agent killed and
brought back, `down` (twice) leaving no trace.

One mesh per module (its own cluster name and ports, so a running demo is never
touched), removed at teardown even when a test fails."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.test_cli_support import ctl, free_port

pytestmark = [pytest.mark.netns, pytest.mark.e2e]


@dataclass
class Mesh:
    cluster: str
    up_output: str

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return ctl("--cluster", self.cluster, *args, timeout=timeout)

    def json(self, *args: str) -> dict:  # type: ignore[type-arg]
        out = self.ctl(*args, "-o", "json")
        assert out.stdout, out.stderr
        return dict(json.loads(out.stdout))


def traces(cluster: str) -> list[str]:
    found = [f"netns {n}" for n in os.listdir("/var/run/netns") if n.startswith(cluster + "-")] \
        if os.path.isdir("/var/run/netns") else []
    for path in (Path("/run/ambientmesh") / cluster, Path("/sys/fs/cgroup") / cluster,
                 Path("/sys/fs/cgroup/unified") / cluster):
        if path.exists():
            found.append(str(path))
    pins = Path("/sys/fs/bpf/ambientmesh")
    if pins.is_dir():
        found += [str(p) for p in pins.iterdir() if p.name.startswith(cluster + "-")]
    return found


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    cluster = "amt" + secrets.token_hex(3)
    try:
        out = ctl("--cluster", cluster, "up", "--grpc-port", str(free_port()), "--admin-port",
                  str(free_port()), "--timeout", "90", timeout=400)
        assert out.returncode == 0, out.stdout + out.stderr
        yield Mesh(cluster, out.stdout)
    finally:
        ctl("--cluster", cluster, "down", timeout=120)


def test_up_reports_readiness_and_next_steps(mesh: Mesh) -> None:
    assert f"Local mesh '{mesh.cluster}' is ready: 2 nodes, 6 pods" in mesh.up_output
    assert "explain demo/frontend-0 catalog.demo:80/items" in mesh.up_output
    again = mesh.ctl("up")
    assert again.returncode == 0
    assert "is already running" in again.stdout and "Nothing was changed" in again.stdout


def test_status_is_healthy(mesh: Mesh) -> None:
    out = mesh.ctl("status", "-o", "json")
    report = json.loads(out.stdout)
    assert out.returncode == 0, report["problems"]
    assert report["healthy"] is True
    assert [n["name"] for n in report["nodes"]] == ["node-1", "node-2"]
    assert all(n["bpfAttached"] and n["connected"] for n in report["nodes"])
    assert {"name": "demo", "enrolled": True, "enrolledPods": 4} in report["namespaces"]
    assert report["ca"]["notAfter"]


def test_get_pods_has_nodes_and_ips(mesh: Mesh) -> None:
    pods = mesh.json("get", "pods", "-A")
    assert pods["kind"] == "List"
    by_name = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in pods["items"]}
    assert {"demo/frontend-0", "demo/inventory-0", "legacy/client"} <= set(by_name)
    for p in by_name.values():
        assert p["spec"]["nodeName"] in ("node-1", "node-2")
        assert p["status"]["podIP"].startswith("10.100.")


def test_explain_names_the_denying_policy(mesh: Mesh) -> None:
    out = mesh.ctl("explain", "legacy/client", "demo/inventory-0:9000", "--exit-code")
    assert out.returncode == 1
    assert "DENIED by AuthorizationPolicy demo/inventory-frontend-only" in out.stdout
    data = mesh.json("explain", "legacy/client", "demo/inventory-0:9000")
    assert data["verdict"]["allowed"] is False


def test_explain_reports_route_and_backends(mesh: Mesh) -> None:
    data = mesh.json("explain", "demo/frontend-0", "catalog.demo:80/items")
    assert data["verdict"]["allowed"] is True
    assert data["route"]["rule"] == "demo/catalog#0"
    assert [(b["service"], b["percent"]) for b in data["route"]["backends"]] == [
        ("catalog-v1.demo", 90.0), ("catalog-v2.demo", 10.0)]
    denied = mesh.json("explain", "demo/frontend-0", "catalog.demo:80/items", "-X", "DELETE")
    assert denied["verdict"]["decidedBy"] == "AuthorizationPolicy demo/catalog-no-delete"


def test_exec_runs_inside_the_pod(mesh: Mesh) -> None:
    out = mesh.ctl("exec", "demo/frontend-0", "--", sys.executable, "-m",
                   "ambientctl.demo.client", "inventory.demo:9000", "--tcp", "--count", "3")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["codes"] == {"ok": 3}
    code = mesh.ctl("exec", "demo/frontend-0", "--", "sh", "-c", "exit 7")
    assert code.returncode == 7


def test_demo_traffic_and_mtls_metrics(mesh: Mesh) -> None:
    out = subprocess.run([sys.executable, "-m", "ambientctl.demo_traffic", "--cluster",
                          mesh.cluster, "--count", "10"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "refused, as it should be" in out.stdout
    summary = mesh.json("metrics", "--summary")["traffic"]
    flows = {(r["source"], r["destination"], r["security"]) for r in summary}
    # Workloads are named as Istio names them: by their deployment (app), not the pod.
    assert ("demo/frontend", "demo/inventory", "mutual_tls") in flows
    assert ("legacy/client", "demo/frontend", "none") in flows
    text = mesh.ctl("metrics").stdout
    assert 'connection_security_policy="mutual_tls"' in text and 'instance="node-1"' in text


def test_certs_shows_the_served_certificate(mesh: Mesh) -> None:
    cert = mesh.json("certs", "demo/frontend-0")
    assert cert["spiffeId"] == "spiffe://cluster.local/ns/demo/sa/frontend"
    assert cert["trustedByMeshRoot"] is True
    out = mesh.ctl("certs", "legacy/client")
    assert out.returncode == 1 and "not in the mesh" in out.stderr


def test_logs_and_config_dump(mesh: Mesh) -> None:
    assert mesh.ctl("logs", "node-1", "-n", "5").stdout
    assert "frontend listening on :8080" in mesh.ctl("logs", "demo/frontend-0", "-n", "0").stdout
    bad = mesh.ctl("logs", "node-9")
    assert bad.returncode == 2 and "components: controller, node-1, node-2" in bad.stderr
    dump = mesh.json("config", "dump", "node-1")
    assert dump["proxy"]["ackedVersion"] == dump["proxy"]["latestVersion"]
    assert dump["snapshot"]["workloads"]


def test_killed_agent_fails_status_until_it_is_back(mesh: Mesh) -> None:
    record = json.loads((Path("/run/ambientmesh") / mesh.cluster / "pids" /
                         "node-2.json").read_text())
    os.kill(record["pid"], signal.SIGKILL)
    time.sleep(0.5)
    out = mesh.ctl("status")
    assert out.returncode == 1
    assert "× node-2: node agent process is not running" in out.stdout
    assert "fix:" in out.stdout
    back = mesh.ctl("up")
    assert back.returncode == 0 and "Restarted node-2" in back.stdout
    deadline = time.monotonic() + 60
    while (status := mesh.ctl("status")).returncode != 0 and time.monotonic() < deadline:
        time.sleep(1)
    assert status.returncode == 0, status.stdout


def test_down_twice_leaves_no_trace(mesh: Mesh) -> None:
    first = mesh.ctl("down")
    assert first.returncode == 0, first.stderr
    assert "Removed" in first.stdout
    assert traces(mesh.cluster) == []
    second = mesh.ctl("down")
    assert second.returncode == 0 and "Nothing to remove" in second.stdout

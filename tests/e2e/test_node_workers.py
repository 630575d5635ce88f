"""More cores: worker processes serve the same pod listeners as the agent, with the
same config and certificates, and the agent's /metrics counts their connections."""

from __future__ import annotations

import json
import secrets

import pytest

from tests.e2e.mesh_harness import local_mesh, metric_sum, wait_for
from tests.e2e.test_l4_mesh import TOPOLOGY

pytestmark = [pytest.mark.netns, pytest.mark.e2e]


def test_workers_share_the_listeners_and_the_metrics() -> None:
    with local_mesh("amk" + secrets.token_hex(2), agent_args=("--workers", "1")) as mesh:
        mesh.apply(TOPOLOGY)
        client = mesh.pod("demo", "client", enrolled=True)
        server = mesh.pod("demo", "server-2", enrolled=True)
        url = f"http://{server.ip}:8080/"
        wait_for("server-2 answering", lambda: mesh.exec(
            client, ["curl", "-sS", "-m", "3", url]).stdout == "hello from server-2\n")
        assert len(mesh.agent_status("node-1")["workers"]) == 1
        out = mesh.exec(client, ["wrk", "-t2", "-c32", "-d3s", url], timeout=30)
        assert out.returncode == 0 and "Socket errors" not in out.stdout, out.stdout
        print(out.stdout)
        pids = {json.loads(line)["proxy_pid"] for line in mesh.logs("node-1").splitlines()
                if line.startswith('{"log":"access"') and '"direction":"outbound"' in line}
        assert len(pids) == 2, f"connections were served by {pids}"

        def counted() -> bool:
            text = mesh.metrics("node-1")
            sel = {"reporter": "source", "source_workload": "client"}
            opened = metric_sum(text, "istio_tcp_connections_opened_total", **sel)
            closed = metric_sum(text, "istio_tcp_connections_closed_total", **sel)
            return opened == closed >= 33  # wrk's 32 + the warm-up curl, from both pids
        wait_for("merged metrics", counted, timeout=10)

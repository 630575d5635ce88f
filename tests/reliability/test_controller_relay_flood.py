"""The node agent relays <node host IP>:<controller port> to the controller so waypoint
pods reach it (local mode). Red team finding: any pod, in the mesh or not, could open
connections to it without limit, and the relay held each one (two descriptors in the
agent) until the pod closed it: one pod took node-2's agent to its 20,000-descriptor
limit in ~9 s and every pod on the node lost its connections (EMFILE). The relay now
takes a bounded number of connections per source address; the rest are closed at
once, counted (`ambient_connections_refused_total{cause="relay_limit"}`) and logged
once per flood."""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Iterator

import pytest

from nodeagent.agent import RELAY_CONNECTIONS_PER_SOURCE
from tests.e2e.mesh_harness import LocalMesh, local_mesh, metric_sum
from tests.reliability.harness import APPS
from tests.topologies import PY, SLEEP, documents, namespace, pod

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

FLOOD = 400
HOLD = str(APPS / "hold_connections.py")


@pytest.fixture(scope="module")
def mesh() -> Iterator[LocalMesh]:
    with local_mesh("amr" + secrets.token_hex(2), nodes=1,
                    agent_args=("--workers", "0")) as m:
        m.apply(documents(namespace("legacy", ambient=False),
                          pod("outsider", "legacy", "node-1", SLEEP)))
        m.pod("legacy", "outsider", enrolled=False)
        yield m


def test_one_pod_cannot_exhaust_the_agent_through_the_controller_relay(
        mesh: LocalMesh) -> None:
    outsider = mesh.runtime.get_pod("legacy", "outsider")
    host_ip = str(mesh.runtime.get_node("node-1").host_ip)
    agent = mesh.procs["node-1"].pid
    before = len(os.listdir(f"/proc/{agent}/fd"))
    result: dict[str, object] = {}

    def flood() -> None:
        done = mesh.exec(outsider, [PY, HOLD, host_ip, str(mesh.grpc_port),
                                    str(FLOOD), "1.5", "4"], timeout=60)
        result["out"], result["err"] = done.stdout, done.stderr

    attacker = threading.Thread(target=flood)
    attacker.start()
    time.sleep(3.5)  # connections opened and counted, still held by the attacker
    during = len(os.listdir(f"/proc/{agent}/fd"))
    attacker.join(70)
    counts = json.loads(str(result["out"]).strip().splitlines()[-1])
    print(f"agent fds {before} -> {during} while the pod held {FLOOD} connections: "
          f"{counts}")
    assert counts["opened"] == FLOOD, result
    assert counts["still_open"] <= RELAY_CONNECTIONS_PER_SOURCE, counts
    assert during <= before + 2 * RELAY_CONNECTIONS_PER_SOURCE + 16, (before, during)
    assert metric_sum(mesh.metrics("node-1"), "ambient_connections_refused_total",
                      cause="relay_limit") >= FLOOD - RELAY_CONNECTIONS_PER_SOURCE
    refusals = [line for line in mesh.logs("node-1").splitlines()
                if "controller relay refused" in line]
    assert 1 <= len(refusals) <= 3, refusals[:5]

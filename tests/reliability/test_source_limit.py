"""One pod cannot exhaust a node proxy's descriptors (red team finding: a pod holding
~10,000 plain, allowed connections to apps on a node spent the node agent's
descriptors, two per proxied connection, and cut every pod of the node off; HBONE
handshakes that never finish were not limited in number either).

Each node proxy process now admits at most --max-connections-per-source concurrent
connections per source pod (outbound, 15001) and per peer address (inbound plaintext,
15006; inbound HBONE, 15008: handshakes in progress + established tunnels). Here the
agents run with a cap of 200 and no workers (the agent holds every connection, so its
descriptor count is the measure) and one pod holds 600 connections on each path."""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Iterator

import pytest

from tests.e2e.mesh_harness import LocalMesh, local_mesh, metric_sum
from tests.reliability.harness import APPS
from tests.topologies import PY, SLEEP, documents, namespace, pod

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

CAP = 200
FLOOD = 600
PORT = 9000
ECHO = str(APPS / "echo.py")
SLACK = 64  # listeners of a new pod, log files, gRPC: what moves without a flood
HOLD = str(APPS / "hold_connections.py")


@pytest.fixture(scope="module")
def mesh() -> Iterator[LocalMesh]:
    with local_mesh("asl" + secrets.token_hex(2), nodes=2,
                    agent_args=("--workers", "0", "--max-connections-per-source",
                                str(CAP))) as m:
        m.apply(documents(
            namespace("app"), namespace("legacy", ambient=False),
            pod("echo", "app", "node-2", [PY, ECHO, str(PORT)], "echo", "app: echo"),
            pod("victim", "app", "node-1", SLEEP, "victim"),
            pod("flooder", "app", "node-1", SLEEP, "flooder"),
            pod("outsider", "legacy", "node-1", SLEEP)))
        m.wait_pods(enrolled=("app/echo", "app/victim", "app/flooder"),
                    outside=("legacy/outsider",))
        yield m


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize(("attacker", "node", "port", "direction"), [
    ("legacy/outsider", "node-2", PORT, "inbound_plaintext"),  # 15006 on the echo's node
    ("app/flooder", "node-1", PORT, "outbound"),  # 15001 on the flooder's node
    ("legacy/outsider", "node-2", 15008, "inbound"),  # HBONE handshakes never finished
])
def test_one_source_cannot_exhaust_the_node_proxy(mesh: LocalMesh, attacker: str, node: str,
                                                  port: int, direction: str) -> None:
    ns, name = attacker.split("/")
    source = mesh.runtime.get_pod(ns, name)
    echo_ip = str(mesh.runtime.get_pod("app", "echo").ip)
    agent = mesh.procs[node].pid
    refused_before = metric_sum(mesh.metrics(node), "ambient_connections_refused_total",
                                cause="source_limit", direction=direction)
    before = fds(agent)
    logged = len(mesh.logs(node))
    result: dict[str, str] = {}

    def flood() -> None:
        done = mesh.exec(source, [PY, HOLD, echo_ip, str(port), str(FLOOD), "2.5", "5"],
                         timeout=90)
        result["out"], result["err"] = done.stdout, done.stderr

    attacker_thread = threading.Thread(target=flood)
    attacker_thread.start()
    time.sleep(4.0)  # all opened and admitted or reset, still held by the attacker
    during = fds(agent)
    victim = mesh.exec(mesh.runtime.get_pod("app", "victim"), [
        "sh", "-c", f"echo during-flood | socat -t 3 -T 5 - TCP:{echo_ip}:{PORT}"],
        timeout=15)
    attacker_thread.join(100)
    lines = result.get("out", "").strip().splitlines()
    assert lines, result
    counts = json.loads(lines[-1])
    print(f"{direction}: agent fds {before} -> {during} while {attacker} held {FLOOD}: "
          f"{counts}")
    assert counts["opened"] == FLOOD, result
    assert counts["still_open"] <= CAP, counts
    assert during < before + 2 * CAP + SLACK, (before, during)
    assert victim.stdout == "during-flood\n", (victim.returncode, victim.stderr)
    refused = metric_sum(mesh.metrics(node), "ambient_connections_refused_total",
                         cause="source_limit", direction=direction) - refused_before
    assert refused >= FLOOD - CAP, refused
    warnings = [line for line in mesh.logs(node)[logged:].splitlines()
                if "source_limit" in line and "refused" in line]
    assert 1 <= len(warnings) <= 3, warnings[:5]  # once per flood, not per connection


@pytest.fixture(scope="module")
def mesh_with_worker() -> Iterator[LocalMesh]:
    with local_mesh("asw" + secrets.token_hex(2), nodes=2,
                    agent_args=("--workers", "1", "--max-connections-per-source",
                                str(CAP))) as m:
        m.apply(documents(
            namespace("app"), namespace("legacy", ambient=False),
            pod("echo", "app", "node-2", [PY, ECHO, str(PORT)], "echo", "app: echo"),
            pod("flooder", "app", "node-1", SLEEP, "flooder"),
            pod("outsider", "legacy", "node-1", SLEEP)))
        m.wait_pods(enrolled=("app/echo", "app/flooder"), outside=("legacy/outsider",))
        yield m


def worker_pids(agent: int) -> list[int]:
    """The agent's worker processes (its python children; pods are not its children)."""
    pids = []
    for task in os.listdir(f"/proc/{agent}/task"):
        with open(f"/proc/{agent}/task/{task}/children") as f:
            pids += [int(p) for p in f.read().split()]
    return [p for p in pids if b"nodeagent.worker" in open(f"/proc/{p}/cmdline", "rb").read()]


@pytest.mark.parametrize(("attacker", "node", "direction"), [
    ("legacy/outsider", "node-2", "inbound_plaintext"),
    ("app/flooder", "node-1", "outbound"),
])
def test_the_cap_holds_in_each_worker_process(mesh_with_worker: LocalMesh, attacker: str,
                                              node: str, direction: str) -> None:
    """Connections are handed round robin to the agent and its worker; each process
    (each with its own descriptor limit) admits at most CAP per source."""
    mesh = mesh_with_worker
    ns, name = attacker.split("/")
    source = mesh.runtime.get_pod(ns, name)
    echo_ip = str(mesh.runtime.get_pod("app", "echo").ip)
    agent = mesh.procs[node].pid
    workers = worker_pids(agent)
    assert len(workers) == 1, workers
    before = {pid: fds(pid) for pid in (agent, *workers)}
    result: dict[str, str] = {}

    def flood() -> None:
        done = mesh.exec(source, [PY, HOLD, echo_ip, str(PORT), str(FLOOD), "2.5", "5"],
                         timeout=90)
        result["out"], result["err"] = done.stdout, done.stderr

    attacker_thread = threading.Thread(target=flood)
    attacker_thread.start()
    time.sleep(4.0)
    during = {pid: fds(pid) for pid in before}
    attacker_thread.join(100)
    lines = result.get("out", "").strip().splitlines()
    assert lines, result
    counts = json.loads(lines[-1])
    print(f"{direction}: fds {before} -> {during} while {attacker} held {FLOOD}: {counts}")
    assert counts["opened"] == FLOOD, result
    assert counts["still_open"] <= 2 * CAP, counts  # two processes, CAP each
    for pid, n in during.items():
        assert n < before[pid] + 2 * CAP + SLACK, (pid, before, during)
    assert sum(n - before[pid] for pid, n in during.items()) > CAP  # both took some

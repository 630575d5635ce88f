"""Warm ahead on a real mesh: a pod's first connection to a 3-endpoint service makes its
node proxy open tunnels to the two other endpoints (no CONNECT), and the pod's next
connections to them open no new TLS connection. With AMBIENT_WARM_TUNNELS=0 nothing
extra is opened. Real controller, node agents, pods and curl; node-1 proxy metrics."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.e2e.mesh_harness import LocalMesh, local_mesh, metric_sum, wait_for
from tests.topologies import SERVE, SLEEP, documents, namespace, pod, service

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

SERVERS = ("server-1", "server-2", "server-3")
TOPOLOGY = documents(
    namespace("demo"),
    *(pod(name, "demo", "node-2", SERVE, "server", "app: server") for name in SERVERS),
    pod("client", "demo", "node-1", SLEEP, "client"),
    pod("client-b", "demo", "node-1", SLEEP, "client"),
    pod("prober", "demo", "node-2", SLEEP, "prober"),
    service("server", "demo", "app: server"),
)


@pytest.fixture(scope="module")
def mesh() -> Iterator[LocalMesh]:
    with local_mesh("amw" + secrets.token_hex(2)) as m:
        m.apply(TOPOLOGY)
        prober = m.pod("demo", "prober", enrolled=True)
        for name in SERVERS:  # each answers (probed from node-2: node-1 sees nothing)
            url = f"http://{m.pod('demo', name, enrolled=True).ip}:8080/"

            def answers(url: str = url) -> bool:
                return m.exec(prober, ["curl", "-sS", "-m", "3", url]).returncode == 0

            wait_for(f"{name} answering", answers, timeout=30)
        yield m


def curl(mesh: LocalMesh, client: str, url: str) -> str:
    out = mesh.exec(mesh.pod("demo", client, enrolled=True),
                    ["curl", "-sS", "-m", "5", url])
    assert out.returncode == 0, f"curl {url} failed: {out.stderr}"
    return out.stdout.strip()


def unlabelled(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " "))


def counters(mesh: LocalMesh) -> dict[str, float]:
    text = mesh.metrics("node-1")
    return {"warmed": metric_sum(text, "ambient_tunnel_warmed_total", outcome="opened"),
            "refused": metric_sum(text, "ambient_tunnel_warmed_total", outcome="refused"),
            "used": unlabelled(text, "ambient_tunnel_warmed_used_total"),
            "opened": unlabelled(text, "ambient_hbone_connections_opened_total")}


def test_first_use_of_a_service_warms_tunnels_to_its_other_endpoints(mesh: LocalMesh) -> None:
    before = counters(mesh)
    first = curl(mesh, "client", "http://server.demo/")
    served_first = first.removeprefix("hello from ")
    assert served_first in SERVERS
    after = wait_for("two tunnels warmed", lambda: (
        c if (c := counters(mesh))["warmed"] - before["warmed"] == 2 else None), timeout=10)
    assert after["opened"] - before["opened"] == 3  # the used endpoint + two warmed
    assert after["refused"] == before["refused"]

    others = [n for n in SERVERS if n != served_first]
    for name in others:
        ip = mesh.pod("demo", name).ip
        assert curl(mesh, "client", f"http://{ip}:8080/") == f"hello from {name}"
    final = counters(mesh)
    assert final["opened"] == after["opened"]  # no new TLS connection for either
    assert final["used"] - before["used"] == 2


def test_warming_off_opens_no_extra_tunnel(mesh: LocalMesh,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Node-1's agent restarted with AMBIENT_WARM_TUNNELS=0 (its counters start at 0)."""
    agent = mesh.procs["node-1"]
    agent.terminate()
    agent.wait(timeout=15)
    monkeypatch.setenv("AMBIENT_WARM_TUNNELS", "0")
    mesh.start_agent("node-1")
    wait_for("node-1 agent back", lambda: "demo/client-b" in
             mesh.agent_status("node-1")["enrolled_pods"], timeout=30)
    first = curl(mesh, "client-b", "http://server.demo/").removeprefix("hello from ")
    assert first in SERVERS
    c = counters(mesh)
    assert (c["warmed"], c["opened"]) == (0, 1)
    other = next(n for n in SERVERS if n != first)
    assert curl(mesh, "client-b", f"http://{mesh.pod('demo', other).ip}:8080/") == \
        f"hello from {other}"
    assert counters(mesh)["opened"] == 2  # cold: a new TLS connection

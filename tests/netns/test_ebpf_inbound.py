"""Inbound capture (sk_lookup) across nodes, with real listeners."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ebpf import ListenerError
from mesh.runtime import LocalRuntime
from mesh.runtime.netns import in_netns
from tests.netns.ebpf_helpers import (
    CaptureListener,
    enrolled,
    node_redirector,
    run_json,
    serving,
)

pytestmark = pytest.mark.netns


def _local_port(conn: socket.socket) -> str:
    host, port = conn.getsockname()[:2]
    return f"inbound {host} {port}"


@pytest.fixture
def world(runtime: LocalRuntime) -> Iterator[dict[str, Any]]:
    """An enrolled server pod on n1 with the proxy's 15006 listener; a client on n2."""
    node = runtime.create_node("n1")
    runtime.create_node("n2")
    server = runtime.create_pod("n1", "demo", "server")
    client = runtime.create_pod("n2", "demo", "client")
    with node_redirector(runtime, node) as redirector:
        pod = enrolled(server, inbound_excluded_ports=(9090,))
        with CaptureListener(server.netns, ("::", 15006), _local_port, v6only=False) as inbound:
            redirector.register_inbound_listener(server.netns, inbound.sock)
            redirector.enroll(pod)
            yield {"rt": runtime, "redirector": redirector, "server": server, "client": client,
                   "inbound": inbound, "pod": pod}


def test_any_port_lands_on_inbound_listener_with_original_port(world: dict[str, Any]) -> None:
    rt, server = world["rt"], world["server"]
    ip, ip6 = str(server.ip), str(server.ip6)
    targets = [f"{ip}:80", f"{ip}:8080", f"{ip}:31337", f"[{ip6}]:8080"]
    results = run_json(rt, world["client"], ["connect", *targets])
    replies = sorted(r.get("reply", r.get("error")) for r in results)
    assert replies == sorted([
        f"inbound ::ffff:{ip} 80", f"inbound ::ffff:{ip} 8080", f"inbound ::ffff:{ip} 31337",
        f"inbound {ip6} 8080",
    ])
    redirector = world["redirector"]
    assert redirector.status()["inbound_links_attached"] == 1
    assert redirector.status()["inbound_listeners"] == 2  # dual-stack: v4 and v6 keys


def test_hbone_excluded_and_loopback_traffic_is_not_captured(world: dict[str, Any]) -> None:
    rt, server = world["rt"], world["server"]
    ip = str(server.ip)
    with serving(rt, server, [(ip, 15008), (ip, 9090), ("127.0.0.1", 8080)]):
        remote = run_json(rt, world["client"], ["connect", f"{ip}:15008", f"{ip}:9090"])
        local = run_json(rt, server, ["connect", "127.0.0.1:8080"])
    assert sorted(r["reply"] for r in remote) == [f"direct {ip} 15008", f"direct {ip} 9090"]
    assert [r["reply"] for r in local] == ["direct 127.0.0.1 8080"]


def test_without_listener_capture_fails_closed_and_unenroll_restores_direct(
    world: dict[str, Any],
) -> None:
    rt, server, redirector = world["rt"], world["server"], world["redirector"]
    ip = str(server.ip)
    with serving(rt, server, [(ip, 8080)]):
        redirector.unregister_inbound_listener(server.netns)
        [refused] = run_json(rt, world["client"], ["connect", f"{ip}:8080"])
        assert "ConnectionRefused" in refused.get("error", ""), refused
        redirector.unenroll(world["pod"])
        [direct] = run_json(rt, world["client"], ["connect", f"{ip}:8080"])
        assert direct["reply"] == f"direct {ip} 8080"
        assert redirector.status()["inbound_links"] == 0


def test_reregistering_a_listener_hands_over_without_refusals(world: dict[str, Any]) -> None:
    """A new proxy registers its listener before the old one closes: no gap."""
    rt, server, redirector = world["rt"], world["server"], world["redirector"]
    ip = str(server.ip)
    outcome: dict[str, Any] = {}

    def loop() -> None:
        outcome["r"] = run_json(rt, world["client"], ["loop", "2.5", f"{ip}:8080"])

    # (The real handover passes the socket itself over SCM_RIGHTS; any listener works.)
    with CaptureListener(server.netns, ("::", 15106), lambda c: "second 0", v6only=False) as new:
        t = threading.Thread(target=loop)
        t.start()
        time.sleep(1.0)
        redirector.register_inbound_listener(server.netns, new.sock)
        # The old proxy drains what is already queued on its listener, then goes away:
        # closing a listener resets connections still in its accept queue.
        time.sleep(0.3)
        world["inbound"].close()
        t.join(timeout=30)
    [summary] = outcome["r"]
    counts = summary["counts"]
    assert set(counts) == {"inbound", "second"}, summary
    assert counts["inbound"] > 5 and counts["second"] > 5


def test_listener_must_be_a_listening_socket_in_the_pod_netns(world: dict[str, Any]) -> None:
    redirector, server, client = world["redirector"], world["server"], world["client"]
    with in_netns(client.netns):
        elsewhere = socket.socket()
    with elsewhere:
        elsewhere.bind(("0.0.0.0", 0))
        elsewhere.listen()
        with pytest.raises(ListenerError, match="another network namespace"):
            redirector.register_inbound_listener(server.netns, elsewhere)
    with in_netns(server.netns):
        idle = socket.socket()
    with idle, pytest.raises(ListenerError, match="not a listening TCP socket"):
        redirector.register_inbound_listener(server.netns, idle)

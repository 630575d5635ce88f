"""Inbound capture (sk_lookup) across nodes, with real listeners."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ebpf import ListenerError, libbpf
from ebpf import constants as C
from ebpf.netns import netns_path
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
    """An enrolled server pod on n1 with the proxy's 15006 listener; a client on n2 and
    a neighbor on n1 (same bridge: it can reach the server's link-local address)."""
    node = runtime.create_node("n1")
    runtime.create_node("n2")
    server = runtime.create_pod("n1", "demo", "server")
    client = runtime.create_pod("n2", "demo", "client")
    neighbor = runtime.create_pod("n1", "demo", "neighbor")
    with node_redirector(runtime, node) as redirector:
        pod = enrolled(server, inbound_excluded_ports=(9090,))
        with CaptureListener(server.netns, ("::", 15006), _local_port, v6only=False) as inbound:
            redirector.register_inbound_listener(server.netns, inbound.sock)
            redirector.enroll(pod)
            yield {"rt": runtime, "redirector": redirector, "server": server, "client": client,
                   "neighbor": neighbor, "inbound": inbound, "pod": pod, "node": node}


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
        assert redirector.status()["inbound_drops"]["no_listener"] >= 1
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


def _ip(netns: str, *args: str) -> str:
    done = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True,
                          timeout=10, check=True)
    return done.stdout


def _socat(rt: LocalRuntime, pod: Any, address: str) -> str:
    """What a real client (socat, as in the issue's report) reads from `address`."""
    done = rt.run(pod, ["socat", "-T", "5", "-u", address, "-"], timeout=20)
    return done.stdout.strip() or f"socat exit {done.returncode}: {done.stderr.strip()}"


def _link_local(netns: str, timeout: float = 10.0) -> str:
    """The pod's eth0 fe80:: address once DAD is done (a tentative one takes no SYN)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in _ip(netns, "-6", "-o", "addr", "show", "dev", "eth0", "scope",
                        "link").splitlines():
            if "tentative" not in line:
                return line.split()[3].split("/")[0]
        time.sleep(0.1)
    raise AssertionError(f"no usable link-local address on eth0 of {netns}")


def test_link_local_and_addresses_added_after_enrollment_are_captured(
    world: dict[str, Any],
) -> None:
    """Issue 18 finding 2: every non-loopback address of an enrolled pod is captured,
    not only the IPs it was enrolled with: its eth0 link-local address (reachable from
    a pod on the same node) and addresses added to eth0 after enrollment."""
    rt, server, redirector = world["rt"], world["server"], world["redirector"]
    ll = _link_local(server.netns)
    extra4, extra6 = "10.100.1.254", "fd00:100:1::fe"  # outside the pod address plan
    _ip(server.netns, "addr", "add", f"{extra4}/24", "dev", "eth0")
    _ip(server.netns, "-6", "addr", "add", f"{extra6}/64", "dev", "eth0", "nodad")
    with serving(rt, server, [("0.0.0.0", 9000), ("::", 9000)]):  # every address
        near = _socat(rt, world["neighbor"], f"TCP6:[{ll}%eth0]:9000")
        far = run_json(rt, world["client"], ["connect", f"{extra4}:9000", f"[{extra6}]:9000"])
    replies = sorted([near, *(r.get("reply", r.get("error", "")) for r in far)])
    assert replies == sorted([
        f"inbound {ll} 9000", f"inbound ::ffff:{extra4} 9000",
        f"inbound {extra6} 9000",
    ]), "a destination of the enrolled pod reached the app around the proxy"
    assert redirector.status()["inbound_drops"] == {
        "no_pod": 0, "no_listener": 0, "assign_failed": 0}


def test_loopback_and_the_proxys_delivery_to_the_pod_ip_are_not_captured(
    world: dict[str, Any],
) -> None:
    """The app talking to itself over ::1, and the proxy delivering to the app at the
    pod's own IPs from inside the pod netns: both come in through lo, never captured."""
    rt, server = world["rt"], world["server"]
    ip, ip6 = str(server.ip), str(server.ip6)
    with serving(rt, server, [("::1", 8080), (ip, 8081), (ip6, 8081)]):
        [local] = run_json(rt, server, ["connect", "[::1]:8080"])
        delivered = []
        for host, family in ((ip, socket.AF_INET), (ip6, socket.AF_INET6)):
            with in_netns(server.netns):
                sock = socket.socket(family, socket.SOCK_STREAM)
            with sock:  # made by this root-cgroup process: not captured outbound
                sock.settimeout(5)
                sock.connect((host, 8081))
                delivered.append(sock.makefile("r").readline().strip())
    assert local["reply"] == "direct ::1 8080"
    assert delivered == [f"direct {ip} 8081", f"direct {ip6} 8081"]


def test_enrolled_netns_without_pod_record_drops_and_counts(world: dict[str, Any]) -> None:
    """The netns is linked but its pod record is gone (a half-done enrollment, a
    deleted entry): the connection is refused, never passed to the app, and counted."""
    rt, server, redirector = world["rt"], world["server"], world["redirector"]
    ip = str(server.ip)
    with serving(rt, server, [(ip, 8080)]):
        redirector._maps.pods.remove(server.cgroup_id, "test")
        [refused] = run_json(rt, world["client"], ["connect", f"{ip}:8080"])
    assert "ConnectionRefused" in refused.get("error", ""), refused
    assert redirector.status()["inbound_drops"]["no_pod"] >= 1


def test_a_pod_in_the_node_netns_is_not_enrolled(world: dict[str, Any]) -> None:
    """Capture takes every address of a netns: linked to the node's own netns (a
    hostNetwork pod) it would take every connection to the node. Refused."""
    from ebpf import EnrolledPod, EnrollmentError

    server, redirector = world["server"], world["redirector"]
    host_pod = EnrolledPod(name="demo/hostnet", netns="/proc/self/ns/net",
                           cgroup_path=server.cgroup_path)
    with pytest.raises(EnrollmentError, match="node's own network namespace"):
        redirector.enroll(host_pod)
    assert redirector.status()["inbound_links"] == 1  # the server's only


def test_reload_swaps_each_pods_instance_without_a_refusal(world: dict[str, Any]) -> None:
    """An agent restart compiles again and swaps a new instance of the pod's program
    into its link (bpf_link_update): a client looping connect()s meanwhile is always
    captured, never refused, never direct."""
    from ebpf.redirector import Redirector

    rt, server, redirector = world["rt"], world["server"], world["redirector"]
    ip = str(server.ip)
    outcome: dict[str, Any] = {}

    def loop() -> None:
        outcome["r"] = run_json(rt, world["client"], ["loop", "3", f"{ip}:8080"])

    ns_fd = os.open(netns_path(server.netns), os.O_RDONLY)
    try:
        [before] = libbpf.prog_query(ns_fd, C.ATTACH_SK_LOOKUP)
        with serving(rt, server, [(ip, 8080)]):
            t = threading.Thread(target=loop)
            t.start()
            time.sleep(0.8)
            for _ in range(2):
                Redirector.load(redirector.pins.name, world["node"].cgroup_path).close()
            t.join(timeout=30)
        [after] = libbpf.prog_query(ns_fd, C.ATTACH_SK_LOOKUP)
    finally:
        os.close(ns_fd)
    [summary] = outcome["r"]
    assert set(summary["counts"]) == {"inbound"}, summary
    assert summary["counts"]["inbound"] > 10
    assert after != before, "the reload linked a new instance"


def test_enrollment_that_cannot_capture_inbound_changes_nothing(world: dict[str, Any]) -> None:
    """No template to make the pod's program from (maps of an older agent): enroll
    fails with an actionable error and leaves no half-enrolled pod behind (captured
    outbound but not inbound)."""
    from ebpf import EnrollmentError
    from ebpf.layout import ProgTemplate

    redirector, neighbor = world["redirector"], world["neighbor"]
    redirector._inbound.store_template(ProgTemplate())
    with pytest.raises(EnrollmentError, match="restart the node agent"):
        redirector.enroll(enrolled(neighbor))
    assert redirector._maps.pods.get(neighbor.cgroup_id) is None
    assert not redirector.pins.inbound_link(neighbor.cgroup_id).exists()
    assert redirector.status()["enrolled_pods"] == 1  # the server only

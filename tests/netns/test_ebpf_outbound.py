"""Outbound capture with real programs, real namespaces and real sockets."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ebpf import PROXY_MARK, Redirector
from mesh.runtime import LocalRuntime
from mesh.runtime.netns import in_netns
from tests.netns.ebpf_helpers import (
    HELPER,
    CaptureListener,
    capture_node,
    enrolled,
    fmt_hostport,
    run_json,
    serving,
)

pytestmark = pytest.mark.netns


@pytest.fixture
def world(runtime: LocalRuntime) -> Iterator[dict[str, Any]]:
    """One node with capture loaded; an enrolled client, a plain client, two servers."""
    with capture_node(runtime, ("client", "plain", "srv1", "srv2")) as w:
        yield w


def _origin_answer(redirector: Redirector) -> Any:
    def describe(conn: socket.socket) -> str:
        ip, port = redirector.original_destination(conn)
        return f"captured {ip} {port}"
    return describe


def test_200_concurrent_connections_captured_with_exact_destinations(
    world: dict[str, Any],
) -> None:
    rt, redirector = world["rt"], world["redirector"]
    dsts = [(str(world[srv].ip), 20000 + i) for srv in ("srv1", "srv2") for i in range(100)]
    assert len(set(dsts)) == 200
    with (
        serving(rt, world["srv1"], [d for d in dsts if d[0] == str(world["srv1"].ip)]),
        serving(rt, world["srv2"], [d for d in dsts if d[0] == str(world["srv2"].ip)]),
        CaptureListener(world["client"].netns, ("127.0.0.1", 15001),
                        _origin_answer(redirector)) as capture,
    ):
        captured = run_json(rt, world["client"], ["connect", *(fmt_hostport(*d) for d in dsts)])
        direct = run_json(rt, world["plain"], ["connect", *(fmt_hostport(*d) for d in dsts)])

    assert len(captured) == 200
    for r in captured:
        host, port = r["dst"]
        assert r.get("reply") == f"captured {host} {port}", r
        assert r["peer"] == [host, port], "the app's getpeername() must show the original"
    assert len(capture.seen) == 200
    assert all(peer[0] == "127.0.0.1" for peer, _ in capture.seen)

    assert len(direct) == 200
    for r in direct:
        host, port = r["dst"]
        assert r.get("reply") == f"direct {host} {port}", r


def test_v6_and_v4_mapped_destinations_are_captured(world: dict[str, Any]) -> None:
    rt, redirector = world["rt"], world["redirector"]
    srv = world["srv1"]
    v6, v4 = str(srv.ip6), str(srv.ip)
    mapped = f"::ffff:{v4}"
    with (
        CaptureListener(world["client"].netns, ("127.0.0.1", 15001),
                        _origin_answer(redirector)) as capture4,
        CaptureListener(world["client"].netns, ("::1", 15001),
                        _origin_answer(redirector)) as capture6,
        serving(rt, srv, [(v4, 8080), (v6, 8080)]),
    ):
        results = run_json(rt, world["client"], ["connect", f"[{v6}]:8080", f"[{mapped}]:9090"])
        plain = run_json(rt, world["plain"], ["connect", f"[{v6}]:8080", f"[{mapped}]:8080"])

    by_dst = {r["dst"][0]: r for r in results}
    assert by_dst[v6]["reply"] == f"captured {v6} 8080"
    assert by_dst[v6]["peer"] == [v6, 8080]
    # A dual-stack socket's v4-mapped destination is reported as the IPv4 address it is.
    assert by_dst[mapped]["reply"] == f"captured {v4} 9090"
    assert by_dst[mapped]["peer"] == [mapped, 9090]
    assert len(capture6.seen) == 1 and len(capture4.seen) == 1
    assert capture4.seen[0][0][0] == "127.0.0.1"  # mapped capture lands on the v4 listener
    assert [r["reply"] for r in plain] == [f"direct {v6} 8080", f"direct {v4} 8080"]


def test_passthrough_loopback_hbone_excluded_ports_and_udp(world: dict[str, Any]) -> None:
    rt, redirector = world["rt"], world["redirector"]
    client, srv = world["client"], world["srv1"]
    redirector.enroll(enrolled(client, outbound_excluded_ports=(5432, 6379)))
    ip = str(srv.ip)
    script = (
        "import socket,json;"
        f"u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);u.settimeout(5);"
        f"u.connect(('{ip}',15008));u.send(b'x');print(json.dumps(u.recv(100).decode().strip()))"
    )
    with (
        CaptureListener(client.netns, ("127.0.0.1", 15001), _origin_answer(redirector)),
        serving(rt, srv, [(ip, 15008), (ip, 5432), (ip, 6379), (ip, 7000)]),
        serving(rt, client, [("127.0.0.1", 7000)]),
    ):
        results = run_json(rt, client, ["connect", f"{ip}:15008", f"{ip}:5432", f"{ip}:6379",
                                        f"{ip}:7000", "127.0.0.1:7000"])
        udp = rt.run(client, [sys.executable, "-c", script], timeout=20)

    replies = {fmt_hostport(*r["dst"]): r.get("reply") for r in results}
    assert replies == {
        f"{ip}:15008": f"direct {ip} 15008",
        f"{ip}:5432": f"direct {ip} 5432",
        f"{ip}:6379": f"direct {ip} 6379",
        f"{ip}:7000": f"captured {ip} 7000",  # not excluded: still captured
        "127.0.0.1:7000": "direct 127.0.0.1 7000",
    }
    assert udp.returncode == 0, udp.stderr
    assert json.loads(udp.stdout) == f"direct-udp {ip} 15008"


def test_proxy_sockets_inside_pod_netns_are_never_captured(world: dict[str, Any]) -> None:
    """The loop test: what the proxy (root cgroup) opens in the pod netns goes direct,
    and so does a socket carrying the proxy mark even from inside the pod's cgroup."""
    rt, redirector = world["rt"], world["redirector"]
    client, srv = world["client"], world["srv1"]
    ip = str(srv.ip)
    marked = (
        "import socket;"
        f"s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_MARK,{PROXY_MARK});"
        f"s.settimeout(5);s.connect(('{ip}',7100));print(s.makefile().readline().strip())"
    )
    with (
        CaptureListener(client.netns, ("127.0.0.1", 15001), _origin_answer(redirector)) as cap,
        serving(rt, srv, [(ip, 7100)]),
    ):
        with in_netns(client.netns):
            proxy_sock = socket.socket()
        with proxy_sock:
            proxy_sock.settimeout(5)
            proxy_sock.connect((ip, 7100))
            assert proxy_sock.makefile().readline().strip() == f"direct {ip} 7100"
        done = rt.run(client, [sys.executable, "-c", marked], timeout=20)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"direct {ip} 7100"
        # Control: the same connect from the app is captured.
        [app] = run_json(rt, client, ["connect", f"{ip}:7100"])
        assert app["reply"] == f"captured {ip} 7100"
    assert len(cap.seen) == 1


def test_unenroll_restores_direct_connections_without_restarting_the_app(
    world: dict[str, Any],
) -> None:
    rt, redirector = world["rt"], world["redirector"]
    client, srv = world["client"], world["srv1"]
    ip = str(srv.ip)
    pod = enrolled(client)
    with (
        CaptureListener(client.netns, ("127.0.0.1", 15001), _origin_answer(redirector)),
        serving(rt, srv, [(ip, 7200)]),
    ):
        app = rt.spawn(client, [sys.executable, HELPER, "lines"], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, text=True)
        try:
            assert app.stdin is not None and app.stdout is not None
            assert app.stdout.readline().strip() == "ready"

            def ask() -> str:
                assert app.stdin is not None and app.stdout is not None
                app.stdin.write(f"{ip} 7200\n")
                app.stdin.flush()
                return str(json.loads(app.stdout.readline()).get("reply"))

            assert ask() == f"captured {ip} 7200"
            redirector.unenroll(pod)
            assert not redirector.is_enrolled(pod)
            assert ask() == f"direct {ip} 7200"
            redirector.enroll(pod)
            assert ask() == f"captured {ip} 7200"
        finally:
            app.kill()
            app.wait(timeout=10)

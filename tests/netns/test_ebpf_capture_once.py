"""A capture record answers one connection (issue 18.1): real programs, namespaces,
sockets. The proxy takes the record as it reads it, so neither a second read nor a
later, uncaptured connection to 15001 from the same client port finds a destination."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ebpf import Redirector
from ebpf.errors import OriginalDestinationUnknown
from mesh.runtime import LocalRuntime
from tests.netns.ebpf_helpers import CaptureListener, capture_node, fmt_hostport, run_json, serving

pytestmark = pytest.mark.netns


@pytest.fixture
def world(runtime: LocalRuntime) -> Iterator[dict[str, Any]]:
    with capture_node(runtime, ("client", "srv")) as w:
        yield w


def _read_twice(redirector: Redirector) -> Any:
    def describe(conn: socket.socket) -> str:
        ip, port = redirector.original_destination(conn)
        try:
            again = "again {} {}".format(*redirector.original_destination(conn))
        except OriginalDestinationUnknown:
            again = "then unknown"
        return f"captured {ip} {port} {again}"
    return describe


def test_a_capture_record_answers_one_read(world: dict[str, Any]) -> None:
    rt, redirector, srv = world["rt"], world["redirector"], world["srv"]
    dsts = [(str(srv.ip), 7200 + i) for i in range(20)]
    with (
        serving(rt, srv, dsts),
        CaptureListener(world["client"].netns, ("127.0.0.1", 15001),
                        _read_twice(redirector)),
    ):
        results = run_json(rt, world["client"], ["connect", *(fmt_hostport(*d) for d in dsts)])
    assert len(results) == 20
    for r in results:
        host, port = r["dst"]
        assert r.get("reply") == f"captured {host} {port} then unknown", r


REUSE_PORTS = """
import socket, struct, sys
srv, port = sys.argv[1], int(sys.argv[2])
def exchange(dst, client_port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(5)
    s.bind(("127.0.0.1", client_port))
    s.connect(dst)
    reply = s.makefile().readline().strip()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # with a reset: no TIME_WAIT holds the client port
    return reply
for client_port in range(41000, 41050):
    print(exchange((srv, port), client_port))  # captured: leaves a record
    print(exchange(("127.0.0.1", 15001), client_port))  # same client port, not captured
"""


def test_a_connection_to_15001_that_was_not_captured_finds_no_record(
        world: dict[str, Any]) -> None:
    """A direct connection to 127.0.0.1:15001 (loopback: not captured) from the very
    client port a captured connection used never gets that connection's destination."""
    rt, redirector, srv = world["rt"], world["redirector"], world["srv"]

    def once(conn: socket.socket) -> str:
        ip, port = redirector.original_destination(conn)
        return f"captured {ip} {port}"

    with (
        serving(rt, srv, [(str(srv.ip), 7300)]),
        CaptureListener(world["client"].netns, ("127.0.0.1", 15001), once) as capture,
    ):
        done = rt.run(world["client"], [sys.executable, "-c", REUSE_PORTS, str(srv.ip), "7300"],
                      timeout=60)
    assert done.returncode == 0, done.stderr
    replies = done.stdout.splitlines()
    assert len(replies) == 100 and len(capture.seen) == 100
    assert set(replies[0::2]) == {f"captured {srv.ip} 7300"}, replies[:4]
    assert {r.split(":")[0] for r in replies[1::2]} == {
        "error OriginalDestinationUnknown"}, replies[:4]

"""The same-node splice on its own (ebpf/splice.py + nodeagent/proxy/splice.py): real
BPF program and maps, real TCP sockets on loopback, a real client and server on each
end. The proxy in the middle holds the two sockets and must read none of the bytes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from ebpf import splice as ksplice
from ebpf.pins import PinLayout
from nodeagent.proxy.splice import SplicedTransfer, Splicer, SpliceUnavailable

pytestmark = pytest.mark.netns

MB = 1 << 20


@pytest.fixture
def pin_name() -> Iterator[str]:
    name = "amtsplice" + secrets.token_hex(3)
    pins = PinLayout(name)
    pins.create()
    try:
        ksplice.install(name)
        yield name
    finally:
        pins.remove_all()


def _pairs() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    """(client, proxy's accepted socket, proxy's dialled socket, server)."""
    front, back = socket.socket(), socket.socket()
    for s in (front, back):
        s.bind(("127.0.0.1", 0))
        s.listen()
    client = socket.create_connection(front.getsockname())
    accepted, _ = front.accept()
    dialled = socket.create_connection(back.getsockname())
    server, _ = back.accept()
    front.close()
    back.close()
    for s in (accepted, dialled):
        s.setblocking(False)
    return client, accepted, dialled, server


def _blast(sock: socket.socket, total: int, seed: bytes, close: bool = True) -> str:
    """Send `total` pseudo-random bytes, half-close; returns their sha256."""
    digest = hashlib.sha256()
    block = hashlib.sha256(seed).digest() * (MB // 32)
    sent = 0
    while sent < total:
        chunk = block[: min(MB, total - sent)]
        sock.sendall(chunk)
        digest.update(chunk)
        sent += len(chunk)
    if close:
        sock.shutdown(socket.SHUT_WR)
    return digest.hexdigest()


def _drain(sock: socket.socket) -> tuple[int, str]:
    digest, total = hashlib.sha256(), 0
    while data := sock.recv(MB):
        digest.update(data)
        total += len(data)
    return total, digest.hexdigest()


def _run_splice(splicer: Splicer, a: socket.socket, b: socket.socket) -> SplicedTransfer:
    return asyncio.run(splicer.relay(a, b))


def test_request_response_with_bytes_queued_before_the_splice(pin_name: str) -> None:
    """The client's request and the server's greeting are both queued before the
    splice: without the kick they would wait for a next segment that never comes."""
    client, accepted, dialled, server = _pairs()
    client.sendall(b"GET / early request")
    server.sendall(b"220 greeting")
    splicer = Splicer.open(pin_name)
    result: list[SplicedTransfer] = []
    t = threading.Thread(target=lambda: result.append(_run_splice(splicer, accepted, dialled)))
    t.start()
    server.settimeout(5)
    client.settimeout(5)
    assert server.recv(100) == b"GET / early request"
    assert client.recv(100) == b"220 greeting"
    client.shutdown(socket.SHUT_WR)
    assert server.recv(100) == b""  # the client's FIN arrived as EOF
    server.sendall(b"bye")
    server.close()
    assert client.recv(100) == b"bye"
    assert client.recv(100) == b""
    t.join(10)
    assert not t.is_alive()
    assert result[0].request_bytes == len(b"GET / early request")
    assert result[0].response_bytes == len(b"220 greeting") + 3
    assert result[0].user_bytes == 0
    assert splicer.maps is not None and set(splicer.maps.count().values()) == {0}
    client.close()
    splicer.close()


ENDPOINT = """
import hashlib, json, socket, sys, threading
sock = socket.socket(fileno=int(sys.argv[1]))
size, seed = int(sys.argv[2]), sys.argv[3].encode()
out = {}
def send():
    digest, sent = hashlib.sha256(), 0
    block = hashlib.sha256(seed).digest() * 32768
    while sent < size:
        chunk = block[: min(len(block), size - sent)]
        sock.sendall(chunk)
        digest.update(chunk)
        sent += len(chunk)
    sock.shutdown(socket.SHUT_WR)
    out["sent"] = digest.hexdigest()
t = threading.Thread(target=send)
t.start()
digest, total = hashlib.sha256(), 0
while data := sock.recv(1 << 20):
    digest.update(data)
    total += len(data)
t.join()
out["received"], out["received_sha256"] = total, digest.hexdigest()
print(json.dumps(out))
"""


def _endpoint(sock: socket.socket, size: int, seed: str) -> subprocess.Popen[str]:
    """A real peer process: sends `size` bytes and half-closes while it reads until
    EOF, then prints what it sent and received (sha256)."""
    proc = subprocess.Popen([sys.executable, "-c", ENDPOINT, str(sock.fileno()), str(size),
                             seed], pass_fds=[sock.fileno()], stdout=subprocess.PIPE,
                            text=True)
    sock.close()
    return proc


def test_bulk_both_ways_checksummed_and_never_in_user_space(pin_name: str) -> None:
    """56 MB each way at once between two processes, each half-closing on its own:
    the bytes and their checksums arrive whole, the BPF counters account for every
    byte, and the proxy forwarded none itself (user_bytes == 0: it never read one)."""
    size = 56 * MB  # below SPLICE_HIGH_WATER: never paused, whatever the readers' pace
    client, accepted, dialled, server = _pairs()
    splicer = Splicer.open(pin_name)
    procs = [_endpoint(client, size, "up"), _endpoint(server, size + 7, "down")]
    relay = asyncio.run(asyncio.wait_for(splicer.relay(accepted, dialled), 60))
    at_client, at_server = (json.loads(p.communicate(timeout=30)[0]) for p in procs)
    assert (at_server["received"], at_server["received_sha256"]) == (size, at_client["sent"])
    assert (at_client["received"], at_client["received_sha256"]) == (size + 7,
                                                                     at_server["sent"])
    assert (relay.request_bytes, relay.response_bytes, relay.user_bytes) == (
        size, size + 7, 0)
    assert not relay.reset
    assert splicer.maps is not None and set(splicer.maps.count().values()) == {0}
    splicer.close()


def test_slow_reader_is_backpressured_not_buffered_without_limit(pin_name: str) -> None:
    """A server that stops reading: the kernel would queue everything the client sends
    (measured: 200 MB in 2 s with no pause). With the pause the client is held back
    to a bounded amount, and once the server reads, everything arrives in order."""
    client, accepted, dialled, server = _pairs()
    splicer = Splicer.open(pin_name)
    sent = {"n": 0}
    digest = hashlib.sha256()
    block = os.urandom(MB)

    def sender() -> None:
        client.settimeout(3)
        try:
            for _ in range(256):
                client.sendall(block)
                digest.update(block)
                sent["n"] += MB
        except TimeoutError:
            return

    relay: list[SplicedTransfer] = []
    rt = threading.Thread(target=lambda: relay.append(_run_splice(splicer, accepted, dialled)))
    rt.start()
    st = threading.Thread(target=sender)
    st.start()
    st.join(30)
    held_back_at = sent["n"]
    assert held_back_at < 96 * MB, f"the client could push {held_back_at >> 20} MB"
    client.settimeout(None)
    # the reader comes back: what was sent arrives whole and in order
    got = hashlib.sha256()
    total = 0
    server.settimeout(10)
    while total < held_back_at:
        data = server.recv(MB)
        assert data
        got.update(data)
        total += len(data)
    assert got.hexdigest() == digest.hexdigest()
    client.close()
    server.close()
    rt.join(10)
    assert relay and relay[0].request_bytes >= held_back_at
    splicer.close()


def test_reset_on_one_side_resets_the_other_and_leaves_no_entry(pin_name: str) -> None:
    client, accepted, dialled, server = _pairs()
    splicer = Splicer.open(pin_name)
    relay: list[SplicedTransfer] = []
    t = threading.Thread(target=lambda: relay.append(_run_splice(splicer, accepted, dialled)))
    t.start()
    client.sendall(b"hello")
    server.settimeout(5)
    assert server.recv(10) == b"hello"
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    server.close()  # RST
    client.settimeout(5)
    with pytest.raises(ConnectionResetError):
        while client.recv(10):
            pass
    t.join(10)
    assert relay and relay[0].reset
    assert splicer.maps is not None and set(splicer.maps.count().values()) == {0}
    client.close()
    splicer.close()


def test_no_program_installed_is_a_fallback_with_a_reason() -> None:
    splicer = Splicer.open("amtsplice-absent")
    a, b = socket.socketpair()
    with pytest.raises(SpliceUnavailable) as err:
        asyncio.run(splicer.relay(a, b))
    assert err.value.reason == "not_installed"
    a.close()
    b.close()

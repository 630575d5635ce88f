"""The listener keeper really holds sockets across its clients (SCM_RIGHTS)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from mesh.runtime.netns import cookie_of
from nodeagent.listener_store import Listeners, ListenerStore


def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def test_sockets_outlive_the_agent_that_opened_them(tmp_path: Path) -> None:
    path = tmp_path / "keeper.sock"
    first = ListenerStore(path, idle_exit=2.0)  # starts the keeper process
    try:
        sock = listener()
        port = sock.getsockname()[1]
        gone = listener()
        first.put("pod/a|127.0.0.1|15001", sock)
        first.put("pod/b|127.0.0.1|15001", gone)
        first.delete("pod/b|127.0.0.1|15001")
        sock.close()  # the agent's own descriptor: the keeper still holds the socket
        gone.close()
        first.close()
        # A client connecting while no agent runs waits in the backlog.
        waiting = socket.create_connection(("127.0.0.1", port), timeout=2)
        second = ListenerStore(path, idle_exit=2.0)
        inherited = second.fetch()
        assert list(inherited) == ["pod/a|127.0.0.1|15001"]
        taken = inherited["pod/a|127.0.0.1|15001"]
        assert taken.getsockname()[1] == port
        conn, _ = taken.accept()
        waiting.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        for s in (conn, waiting, taken):
            s.close()
        second.close()
    finally:
        first.close()


def test_stale_sockets_are_dropped_and_the_keeper_exits_when_idle(tmp_path: Path) -> None:
    path = tmp_path / "keeper.sock"
    store = ListenerStore(path, idle_exit=0.5)
    sock = listener()
    store.put("k", sock)
    sock.close()
    store.close()
    listeners = Listeners(ListenerStore(path, idle_exit=0.5))
    assert listeners.take("k", cookie_of(socket.socket()) + 12345) is None  # other netns
    listeners.close_unclaimed()
    assert listeners.store is not None
    listeners.store.close()
    deadline = time.monotonic() + 5
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not path.exists(), "the keeper did not exit once idle"

"""The agent's side of the listener keeper (see listener_keeper.py)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import structlog

from nodeagent.listener_keeper import MAX_MESSAGE

log = structlog.get_logger("nodeagent.listeners")


class KeeperUnavailable(OSError):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"listener keeper at {path} unavailable ({reason}): listeners will "
                         "not survive an agent restart")


class ListenerStore:
    """A connection to the keeper, started on first use if none runs."""

    def __init__(self, path: Path, idle_exit: float = 30.0) -> None:
        self.path = path
        self.idle_exit = idle_exit
        self.conn = self._connect()

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + 5.0
        started = False
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                sock.connect(str(self.path))
                sock.settimeout(5.0)  # a wedged keeper must not wedge the agent
                return sock
            except OSError as e:
                sock.close()
                if time.monotonic() > deadline:
                    raise KeeperUnavailable(self.path, str(e)) from None
            if not started:
                subprocess.Popen(
                    [sys.executable, "-m", "nodeagent.listener_keeper", str(self.path),
                     str(self.idle_exit)],
                    start_new_session=True, stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                started = True
                log.info("listener keeper started", socket=str(self.path))
            time.sleep(0.02)

    def fetch(self) -> dict[str, socket.socket]:
        """Every socket the keeper holds (from a previous agent), by key."""
        self.conn.send(json.dumps({"op": "get"}).encode())
        out: dict[str, socket.socket] = {}
        while True:
            data, fds, _, _ = socket.recv_fds(self.conn, MAX_MESSAGE, 1)
            msg = json.loads(data)
            if msg.get("end"):
                return out
            out[msg["key"]] = socket.socket(fileno=fds[0])

    def put(self, key: str, sock: socket.socket) -> None:
        socket.send_fds(self.conn, [json.dumps({"op": "put", "key": key}).encode()],
                        [sock.fileno()])
        self.conn.recv(MAX_MESSAGE)

    def delete(self, key: str) -> None:
        self.conn.send(json.dumps({"op": "del", "key": key}).encode())
        self.conn.recv(MAX_MESSAGE)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()


class Listeners:
    """Where a pod's listeners come from: the keeper's copies left by a previous agent
    (reused when they still live in the pod's current netns), else freshly bound ones,
    which are handed to the keeper so the next agent can take them over."""

    def __init__(self, store: ListenerStore | None) -> None:
        self.store = store
        self.inherited: dict[str, socket.socket] = store.fetch() if store else {}
        if self.inherited:
            log.info("listeners inherited", count=len(self.inherited))

    def take(self, key: str, netns_cookie: int) -> socket.socket | None:
        from mesh.runtime.netns import cookie_of

        sock = self.inherited.pop(key, None)
        if sock is None:
            return None
        if cookie_of(sock) != netns_cookie:  # the pod was recreated: a stale socket
            sock.close()
            return None
        sock.setblocking(False)
        return sock

    def keep(self, key: str, sock: socket.socket) -> None:
        if self.store is not None:
            try:
                self.store.put(key, sock)
            except OSError as e:
                log.warning("listener not kept", key=key, error=str(e))

    def forget(self, key: str) -> None:
        if self.store is not None:
            with contextlib.suppress(OSError):
                self.store.delete(key)

    def close_unclaimed(self) -> None:
        """Sockets of pods that are gone: drop them here and in the keeper."""
        for key, sock in self.inherited.items():
            sock.close()
            self.forget(key)
        self.inherited.clear()

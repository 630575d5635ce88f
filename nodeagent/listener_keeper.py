"""Listener keeper: holds the node proxy's listening sockets across agent restarts.

A tiny process, started by the first agent and outliving it (own session), that keeps
a duplicate of every listening socket the agent opened in pod namespaces. A restarted
agent (SIGTERM or SIGKILL) fetches them over a unix socket with SCM_RIGHTS and accepts
on the very same sockets: connections arriving while no agent runs wait in the listen
backlog instead of being refused, and the inbound SOCKMAP entries stay valid because
the sockets never close. The keeper exits when its socket file is removed (with the
node's state, by `ambientctl down` or test teardown) or once no agent has been
connected for `idle_exit` seconds, closing what it holds.

Protocol (SOCK_SEQPACKET, one JSON message per packet):
  {"op": "put", "key": K} + 1 fd   keep this socket under K (replaces an older one)
  {"op": "del", "key": K}          forget K
  (both answered {"ok": true} once applied, so no later reader sees stale state)
  {"op": "get"}                    answer {"key": K} + fd per socket, then {"end": true}
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import sys
import time
from pathlib import Path

MAX_MESSAGE = 4096


class Keeper:
    def __init__(self, path: Path, idle_exit: float) -> None:
        self.path = path
        self.idle_exit = idle_exit
        self.fds: dict[str, int] = {}
        self.clients: list[socket.socket] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.server.bind(str(path))
        os.chmod(path, 0o600)  # only root (the agent) may take the sockets
        self.server.listen(8)

    def handle(self, client: socket.socket) -> bool:
        """Serve one message; False when the client is gone."""
        try:
            data, fds, _, _ = socket.recv_fds(client, MAX_MESSAGE, 1)
        except OSError:
            return False
        if not data:
            return False
        msg = json.loads(data)
        if msg["op"] == "put" and fds:
            old = self.fds.pop(msg["key"], None)
            if old is not None:
                os.close(old)
            self.fds[msg["key"]] = fds[0]
        elif msg["op"] == "del":
            old = self.fds.pop(msg["key"], None)
            if old is not None:
                os.close(old)
        elif msg["op"] == "get":
            for key, fd in self.fds.items():
                socket.send_fds(client, [json.dumps({"key": key}).encode()], [fd])
            client.send(json.dumps({"end": True}).encode())
        if msg["op"] in ("put", "del"):
            client.send(b'{"ok": true}')  # applied: the agent's next step may rely on it
        for extra in fds[1:] if msg["op"] == "put" else fds:
            os.close(extra)
        return True

    def run(self) -> None:
        alone_since = time.monotonic()
        while True:
            ready, _, _ = select.select([self.server, *self.clients], [], [], 1.0)
            for sock in ready:
                if sock is self.server:
                    self.clients.append(self.server.accept()[0])
                elif not self.handle(sock):
                    self.clients.remove(sock)
                    sock.close()
            if not self.path.exists():  # the node's state was removed (ambientctl down)
                break
            if self.clients:
                alone_since = time.monotonic()
            elif time.monotonic() - alone_since > self.idle_exit:
                break
        for fd in self.fds.values():
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def main(argv: list[str]) -> None:
    path, idle_exit = Path(argv[1]), float(argv[2]) if len(argv) > 2 else 30.0
    Keeper(path, idle_exit).run()


if __name__ == "__main__":
    main(sys.argv)

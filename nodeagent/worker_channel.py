"""The agent <-> worker channel: JSON messages, bulk payloads in chunks, sockets by
SCM_RIGHTS, over one SOCK_SEQPACKET socket pair (message boundaries for free)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import Any

CHUNK = 60 * 1024
MAX_FDS = 16


@dataclass
class Message:
    header: dict[str, Any]
    payload: bytes = b""
    fds: list[int] = field(default_factory=list)


def send(sock: socket.socket, header: dict[str, Any], payload: bytes = b"",
         fds: list[int] | None = None) -> None:
    parts = [payload[i:i + CHUNK] for i in range(0, len(payload), CHUNK)]
    head = json.dumps({**header, "parts": len(parts)}).encode()
    socket.send_fds(sock, [head], fds or [])
    for part in parts:
        sock.send(part)


def receive(sock: socket.socket) -> Message | None:
    """Blocking; None once the other side is gone."""
    data, fds, _, _ = socket.recv_fds(sock, CHUNK, MAX_FDS)
    if not data:
        return None
    header = json.loads(data)
    payload = b"".join(sock.recv(CHUNK) for _ in range(header.pop("parts")))
    return Message(header, payload, list(fds))

"""HTTP/2 PING keepalive of one HBONE connection, as a sans-I/O clock-driven object.

Like Envoy's connection keepalive and ztunnel's pooled connections: after `interval`
seconds without receiving anything, send a PING; if still nothing arrives within
`timeout`, the connection is dead. Any frame counts as a sign of life, not only the
PING's ACK: a peer busy sending a big DATA frame may queue the ACK behind it (head of
line), and bytes arriving prove the path works anyway. The connection feeds it the
time of each read and asks it what to do when its timer fires; no I/O here."""

from __future__ import annotations

import enum
from dataclasses import dataclass

PING_TYPE = 0x6


class KeepaliveAction(enum.Enum):
    WAIT = "wait"
    PING = "ping"
    DEAD = "dead"


@dataclass
class Keepalive:
    interval: float
    timeout: float
    last_received: float
    ping_sent_at: float | None = None
    pings_sent: int = 0

    def received(self, now: float) -> None:
        """Something arrived from the peer (called on every read: kept trivial)."""
        self.last_received = now

    def poll(self, now: float) -> tuple[KeepaliveAction, float]:
        """What to do at `now`, and when to poll next (a monotonic time)."""
        if self.ping_sent_at is not None and self.last_received >= self.ping_sent_at:
            self.ping_sent_at = None  # answered (or another frame proved the path)
        if self.ping_sent_at is None:
            due = self.last_received + self.interval
            if now < due:
                return KeepaliveAction.WAIT, due
            self.ping_sent_at = now
            self.pings_sent += 1
            return KeepaliveAction.PING, now + self.timeout
        deadline = self.ping_sent_at + self.timeout
        if now < deadline:
            return KeepaliveAction.WAIT, deadline
        return KeepaliveAction.DEAD, deadline

    def opaque(self) -> bytes:
        """The 8 bytes of the current PING (its sequence number)."""
        return self.pings_sent.to_bytes(8, "big")


def ping_frame(opaque: bytes) -> bytes:
    """An HTTP/2 PING frame (RFC 9113 §6.7): both codecs answer the peer's PINGs
    themselves, but sending one is ours, the same bytes for either codec."""
    if len(opaque) != 8:
        raise ValueError(f"a PING carries exactly 8 opaque bytes, not {len(opaque)}")
    return (8).to_bytes(3, "big") + bytes((PING_TYPE, 0)) + bytes(4) + opaque

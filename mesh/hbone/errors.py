"""Typed HBONE errors; each carries the peer so logs and callers can say where."""

from __future__ import annotations


class HboneError(Exception):
    """Base class of every HBONE error."""


class HboneTunnelError(HboneError):
    """The tunnel connection to a peer could not be set up or was lost."""

    def __init__(self, message: str, *, peer: str) -> None:
        super().__init__(f"{message} (peer {peer})")
        self.peer = peer


class HboneStreamRefused(HboneTunnelError):
    """The peer refused a new stream (REFUSED_STREAM: it is draining); retry it on
    another connection, nothing was processed."""


class HboneConnectError(HboneError):
    """The peer answered CONNECT with a non-2xx status (e.g. 503: upstream refused,
    403: denied by policy). The caller should reset the client's TCP connection."""

    def __init__(self, status: int, peer: str, authority: str) -> None:
        super().__init__(f"CONNECT {authority} via {peer} answered {status}")
        self.status = status
        self.peer = peer
        self.authority = authority


class HboneStreamReset(HboneError):
    """The stream was reset (RST_STREAM) or its connection died before it ended."""

    def __init__(self, stream_id: int, error_code: int, *, peer: str) -> None:
        super().__init__(f"HBONE stream {stream_id} to {peer} reset (HTTP/2 error code "
                         f"{error_code})")
        self.stream_id = stream_id
        self.error_code = error_code
        self.peer = peer


class HboneProtocolError(HboneError):
    """The peer violated HTTP/2 or HBONE; the connection is closed."""

"""Typed HBONE errors; each carries the peer so logs and callers can say where."""

from __future__ import annotations


class HboneError(Exception):
    """Base class of every HBONE error."""


class HboneTunnelError(HboneError):
    """The tunnel connection to a peer could not be set up or was lost."""

    def __init__(self, message: str, *, peer: str) -> None:
        super().__init__(f"{message} (peer {peer})")
        self.peer = peer


class HboneTunnelTimeout(HboneTunnelError):
    """Opening a tunnel took longer than TunnelSettings.connect_timeout. `phase` says
    where it stopped: "TCP connect" (peer or link unreachable), "TLS handshake" or
    "HTTP/2 settings" (something answers TCP but is not an HBONE server, or is
    overloaded), "CONNECT response" (the peer's proxy accepted the tunnel connection
    but did not answer this stream: it or the link stalled)."""

    def __init__(self, phase: str, timeout: float, *, peer: str) -> None:
        HboneError.__init__(self, f"tunnel to {peer} timed out during {phase} "
                                  f"(after {timeout:g} s)")
        self.peer = peer
        self.phase = phase
        self.timeout = timeout


class HboneKeepaliveTimeout(HboneTunnelError):
    """A connection received nothing for keepalive_timeout after a PING: the link or
    the peer is gone. Its streams are reset, the pool forgets it; new tunnels dial anew."""

    def __init__(self, timeout: float, *, peer: str) -> None:
        HboneError.__init__(self, f"tunnel to {peer} failed keepalive: no answer to a "
                                  f"PING within {timeout:g} s (link down or peer hung)")
        self.peer = peer
        self.timeout = timeout


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


class HboneSettingsError(HboneError, ValueError):
    """A TunnelSettings value is out of range; the message names the setting."""

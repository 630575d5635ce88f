"""HBONE: HTTP/2 CONNECT tunnels over mutual TLS 1.3, as Istio ambient speaks them.

Owns the wire protocol (framing, flow control, half-close), the client connection
pool and the server accept loop. It does not create sockets in network namespaces
(callers pass a dialer or a listening socket), decide authorization (the server's
handler does) or pick destinations (the node proxy does). The HTTP/2 codec is
`h2core.H2Core` (ours, narrow and fast; the default) or `framing.H2Framing` (the h2
library, kept as the reference peer): TunnelSettings.framing picks one, both speak
the events of `events.py` (docs/performance.md)."""

from mesh.hbone.client import Dialer, HboneClientPool, StaticTls, TlsSource, default_dial
from mesh.hbone.errors import (
    HboneConnectError,
    HboneError,
    HboneProtocolError,
    HboneStreamRefused,
    HboneStreamReset,
    HboneTunnelError,
)
from mesh.hbone.relay import RelayResult, relay, reset_socket
from mesh.hbone.server import HboneRequest, HboneServer
from mesh.hbone.settings import TunnelSettings
from mesh.hbone.stream import HboneStream

__all__ = [
    "Dialer",
    "HboneClientPool",
    "HboneConnectError",
    "HboneError",
    "HboneProtocolError",
    "HboneRequest",
    "HboneServer",
    "HboneStream",
    "HboneStreamRefused",
    "HboneStreamReset",
    "HboneTunnelError",
    "RelayResult",
    "StaticTls",
    "TlsSource",
    "TunnelSettings",
    "default_dial",
    "relay",
    "reset_socket",
]

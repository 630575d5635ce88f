"""The original destination of a socket the proxy accepted.

Outbound (accepted on loopback:15001): the capture record keyed by what both sides
see — the netns cookie of the accepted socket (it lives in the pod's netns) and its
peer address, which is the client's source address. sockops writes that record
before the client's final ACK leaves, so it exists before accept() can return. The
proxy takes the record as it reads it (lookup-and-delete): it answers one connection,
and a connection to 15001 that was not captured — which may reuse a client port a
captured one had — finds nothing and is refused (OriginalDestinationUnknown) rather
than sent where an earlier connection was going.

Inbound (steered by sk_lookup): nothing to look up — getsockname() of the accepted
socket already is the address the client connected to.
"""

from __future__ import annotations

import ipaddress
import socket

from ebpf import constants as C
from ebpf.errors import OriginalDestinationUnknown
from ebpf.layout import addr_from_bytes, get_addr
from ebpf.maps import OriginalDestinationTable
from ebpf.netns import socket_netns_cookie


def is_outbound_capture(local: tuple[str, int]) -> bool:
    """Was this socket accepted on the outbound capture listener (loopback:15001)?"""
    host, port = local[0], local[1]
    if port != C.OUTBOUND_PORT:
        return False
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


class OriginalDestinations:
    """Answers original_destination() from the pinned capture records."""

    def __init__(self, table: OriginalDestinationTable) -> None:
        self._table = table

    def of(self, sock: socket.socket) -> tuple[str, int]:
        local = sock.getsockname()
        if not is_outbound_capture(local):
            return str(local[0]), int(local[1])
        peer = sock.getpeername()
        cookie = socket_netns_cookie(sock)
        record = self._table.take(cookie, peer[0].split("%", 1)[0], int(peer[1]))
        if record is None:
            raise OriginalDestinationUnknown(
                f"no capture record for the connection from {peer[0]}:{peer[1]} "
                f"(netns cookie {cookie}): the client connected to port {C.OUTBOUND_PORT} "
                "directly instead of being redirected, or its pod is not enrolled on this node"
            )
        return addr_from_bytes(get_addr(record.addr), record.family), int(record.port)

"""The one place the node proxy meets mesh.hbone: tunnels speak for pods.

Outbound tunnels present the *source* pod's certificate and are dialled from inside
that pod's netns; inbound HBONE servers present the *destination* pod's certificate.
TLS contexts are built once per certificate and rebuilt when it is renewed, so a
renewal reaches new connections while established ones carry on.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from mesh.hbone import (
    HboneClientPool,
    HboneConnectError,
    HboneRequest,
    HboneServer,
    HboneStream,
    HboneTunnelError,
    StaticTls,
)
from mesh.identity.bundle import TrustBundle
from mesh.identity.spiffe import SpiffeId
from mesh.identity.svid import CertifiedKey
from mesh.identity.tls import client_context, server_context
from nodeagent.proxy.pod_listeners import PodEndpoint
from nodeagent.proxy.streams import dial

TunnelRefused = HboneConnectError
TunnelFailed = HboneTunnelError
InboundTunnelRequest = HboneRequest


class CertSource(Protocol):
    """Where current certificates come from (the node agent's certificate manager)."""

    def current(self, identity: str) -> CertifiedKey | None: ...

    def trust_bundle(self) -> TrustBundle: ...


class MissingCertificate(Exception):
    def __init__(self, identity: str) -> None:
        super().__init__(f"no certificate for {identity} yet: the CA has not issued it "
                         "(is the controller reachable? see `ambientctl status`)")


@dataclass
class Tunnels:
    certs: CertSource
    pool: HboneClientPool = field(default_factory=HboneClientPool)
    _contexts: dict[tuple[str, bool], tuple[int, bytes, ssl.SSLContext]] = field(
        default_factory=dict)

    def _context(self, identity: str, server: bool) -> ssl.SSLContext:
        ck = self.certs.current(identity)
        if ck is None:
            raise MissingCertificate(identity)
        bundle = self.certs.trust_bundle()
        fingerprint = b"".join(f.encode() for f in bundle.fingerprints())
        cached = self._contexts.get((identity, server))
        if cached is not None and cached[0] == ck.serial and cached[1] == fingerprint:
            return cached[2]
        ctx = server_context(ck, bundle) if server else client_context(ck, bundle)
        self._contexts[(identity, server)] = (ck.serial, fingerprint, ctx)
        return ctx

    async def open(self, pod: PodEndpoint, address: str, port: int, authority: str,
                   expected_identity: str | None) -> HboneStream:
        """A CONNECT tunnel to `authority` via the HBONE server at address:port."""
        source = StaticTls(pod.identity, lambda: self._context(pod.identity, server=False))

        async def dial_in_pod(host: str, p: int) -> socket.socket:
            return await dial(pod.netns, host, p)

        expected = SpiffeId.parse(expected_identity) if expected_identity else None
        return await self.pool.connect(source, (address, port), authority, dial=dial_in_pod,
                                       expected_peer=expected)

    async def serve(self, pod: PodEndpoint, sockets: list[socket.socket],
                    handler: Callable[[HboneRequest], Awaitable[None]]) -> None:
        """Serve HBONE on the pod's 15008 listeners until cancelled."""
        server = HboneServer(lambda: self._context(pod.identity, server=True), handler)
        async with asyncio.TaskGroup() as tg:
            for sock in sockets:
                tg.create_task(server.serve(sock))

"""The one place the node proxy meets mesh.hbone: tunnels speak for pods.

Outbound tunnels present the *source* pod's certificate and are dialled from inside
that pod's netns; inbound HBONE servers present the *destination* pod's certificate.
Both take their TLS context from the certificate manager per new connection, so a
renewal reaches new connections while established ones carry on. Both use the same
TunnelSettings (connect timeout, keepalive): the agent passes its flags in, a worker
process inherits them through the environment (TunnelSettings.env).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from mesh.hbone import (
    HboneClientPool,
    HboneConnectError,
    HboneRequest,
    HboneServer,
    HboneStream,
    HboneTunnelError,
    StaticTls,
    TunnelSettings,
)
from mesh.hbone.errors import HboneKeepaliveTimeout, HboneTunnelTimeout
from mesh.hbone.server import Admit
from mesh.identity.errors import CertificateError
from mesh.identity.spiffe import SpiffeId
from nodeagent.certs import CertificateUnavailableError
from nodeagent.proxy.pod_listeners import PodEndpoint
from nodeagent.proxy.streams import dial

log = structlog.get_logger(__name__)

TunnelRefused = HboneConnectError
TunnelFailed = HboneTunnelError
MissingCertificate = CertificateUnavailableError
InboundTunnelRequest = HboneRequest


class TlsMaterials(Protocol):
    """Current TLS material per identity: the certificate manager in the agent, the
    certificates pushed by the agent in a worker process."""

    def client_tls(self, identity: SpiffeId) -> StaticTls: ...

    def certificate_error(self, identity: SpiffeId) -> str | None: ...

    def server_context_provider(self, identity: SpiffeId) -> Callable[[], ssl.SSLContext]: ...


def settings_from_environment() -> TunnelSettings:
    return TunnelSettings.from_env(os.environ)


def failure_kind(error: HboneTunnelError, *, relaying: bool = False) -> tuple[str, str]:
    """(reason, phase) labels of ambient_tunnel_failures_total for a tunnel error."""
    if isinstance(error, HboneKeepaliveTimeout):
        return "keepalive_timeout", "relay" if relaying else "connect_response"
    if isinstance(error, HboneTunnelTimeout):
        return "connect_timeout", error.phase.lower().replace("/", "").replace(" ", "_")
    return "connect_failed", "setup"


@dataclass
class Tunnels:
    certs: TlsMaterials
    pool: HboneClientPool = field(
        default_factory=lambda: HboneClientPool(settings=settings_from_environment()))
    drain_seconds: float = 0.0

    async def open(self, pod: PodEndpoint, address: str, port: int, authority: str,
                   expected_identity: str | None) -> HboneStream:
        """A CONNECT tunnel to `authority` via the HBONE server at address:port."""
        source = self.certs.client_tls(SpiffeId.parse(pod.identity))

        async def dial_in_pod(host: str, p: int) -> socket.socket:
            # The pool's connect timeout bounds the whole setup, this dial included.
            return await dial(pod.netns, host, p, self.pool.settings.connect_timeout + 1)

        expected = SpiffeId.parse(expected_identity) if expected_identity else None
        # Pooled per source pod, not only per identity: the far side sees the address
        # the connection comes from (authorization ipBlocks, telemetry), so two pods
        # of one ServiceAccount must not share one.
        source_address = (pod.ip6 if ":" in address else pod.ip) or pod.key
        return await self.pool.connect(source, (address, port), authority, dial=dial_in_pod,
                                       expected_peer=expected, source_address=source_address)

    async def serve(self, pod: PodEndpoint, sockets: list[socket.socket],
                    handler: Callable[[HboneRequest], Awaitable[None]],
                    admit: Admit | None = None) -> None:
        """Serve HBONE on the pod's 15008 listeners until cancelled; `admit` caps
        connections per peer address (see HboneServer).

        The pod's server TLS context is built here, before the first caller arrives:
        built on first use it cost that caller's cold tunnel ~1.3 ms (key and chain
        load, trust store) on the critical path. Not issued yet: the first handshake
        builds it (or, still without a certificate, is refused: fail closed)."""
        identity = SpiffeId.parse(pod.identity)
        provider = self.certs.server_context_provider(identity)
        try:
            provider()
        except (CertificateUnavailableError, CertificateError, ssl.SSLError, OSError) as exc:
            log.debug("tunnel.server_context_not_ready", pod=pod.key, identity=str(identity),
                      reason=str(exc))
        server = HboneServer(provider, handler, settings=self.pool.settings,
                             grace=self.drain_seconds, admit=admit)
        async with asyncio.TaskGroup() as tg:
            for sock in sockets:
                tg.create_task(server.serve(sock))

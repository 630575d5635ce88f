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
from prometheus_client import CollectorRegistry

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
from nodeagent.outbound_plan import Hop, Transport
from nodeagent.proxy.pod_listeners import PodEndpoint
from nodeagent.proxy.streams import dial
from nodeagent.proxy.warm import (
    QUIET,
    WarmCollector,
    Warmer,
    WarmTarget,
    enabled_from_environment,
)
from nodeagent.state import ProxyState

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
    warmer: Warmer = field(default_factory=lambda: Warmer(enabled_from_environment()))

    def __post_init__(self) -> None:
        # Warming yields to the tunnels being opened for real connections.
        self.warmer.busy = lambda: not self.pool.quiet_for(QUIET)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Warming and pool counters on the proxy's metrics registry."""
        registry.register(WarmCollector(self.pool, self.warmer))

    def _source_address(self, pod: PodEndpoint, address: str) -> str:
        # Pooled per source pod, not only per identity: the far side sees the address
        # the connection comes from (authorization ipBlocks, telemetry), so two pods
        # of one ServiceAccount must not share one.
        return (pod.ip6 if ":" in address else pod.ip) or pod.key

    def _dialer(self, pod: PodEndpoint) -> Callable[[str, int], Awaitable[socket.socket]]:
        async def dial_in_pod(host: str, p: int) -> socket.socket:
            # The pool's connect timeout bounds the whole setup, this dial included.
            return await dial(pod.netns, host, p, self.pool.settings.connect_timeout + 1)
        return dial_in_pod

    def warm(self, pod: PodEndpoint, service: str, targets: list[WarmTarget]) -> int:
        """`pod` has just connected to `service`: open tunnels (no CONNECT) from it to
        the service's other endpoints `targets` in the background (see warm.py), so
        its next first connection to each is pooled. Returns how many were scheduled."""
        if not self.warmer.enabled:
            return 0

        async def open_one(target: WarmTarget) -> bool:
            expected = (SpiffeId.parse(target.expected_identity)
                        if target.expected_identity else None)
            return await self.pool.warm(
                self.certs.client_tls(SpiffeId.parse(pod.identity)),
                (target.address, target.port), dial=self._dialer(pod),
                expected_peer=expected, source_address=self._source_address(pod, target.address))

        return self.warmer.service_used(pod.key, service, targets, open_one)

    def service_connected(self, state: ProxyState, pod: PodEndpoint, used: Hop,
                          hops: list[Hop]) -> int:
        """The outbound handler's hook: `pod` reached `used`, one of `hops` (the plan
        for a service, in round-robin order). Warms the service's other HBONE
        endpoints, the next ones round robin will pick first."""
        if (not self.warmer.enabled or used.service is None or used.via_waypoint
                or used.transport is not Transport.HBONE):
            return 0
        seen = {used.address}
        targets = []
        for hop in hops:
            if hop.transport is Transport.HBONE and not hop.via_waypoint \
                    and hop.address not in seen:
                seen.add(hop.address)
                identity = state.workload_identity(hop.workload) if hop.workload else None
                targets.append(WarmTarget(hop.address, hop.port, identity))
        return self.warm(pod, used.service, targets)

    async def open(self, pod: PodEndpoint, address: str, port: int, authority: str,
                   expected_identity: str | None) -> HboneStream:
        """A CONNECT tunnel to `authority` via the HBONE server at address:port."""
        source = self.certs.client_tls(SpiffeId.parse(pod.identity))
        expected = SpiffeId.parse(expected_identity) if expected_identity else None
        return await self.pool.connect(source, (address, port), authority,
                                       dial=self._dialer(pod), expected_peer=expected,
                                       source_address=self._source_address(pod, address))

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

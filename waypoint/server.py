"""The waypoint server: accepts connections (HBONE tunnels on 15008, or a plain HTTP
listener for tests and debugging), tells HTTP/2 from HTTP/1.1 by the connection
preface, and hands requests to the pipeline. Also serves the admin endpoints
(/metrics, /healthz/ready, /config_dump) on the metrics address.

Owns one task group for the whole server: listeners, connection handlers, the
upstream pool's background tasks, mirrors and the span exporter all live in it, so
leaving `run` stops everything and closes every socket."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import anyio
import anyio.abc
import structlog

from mesh.authz import AuthzCollector
from mesh.hbone import HboneClientPool, HboneError, HboneRequest, HboneServer, TlsSource
from mesh.identity import SpiffeId
from mesh.ports import HBONE_PORT
from waypoint.accesslog import AccessLog
from waypoint.config import WaypointConfig
from waypoint.errors import UpstreamConnectError
from waypoint.http1 import HEAD_TIMEOUT, DownstreamInfo, Handler, Http1ServerConnection
from waypoint.http2 import PREFACE, Http2ServerConnection
from waypoint.messages import BodySource, BytesBody, RequestHead, Response, local_response
from waypoint.metrics import WaypointMetrics
from waypoint.otlp import OtlpExporter
from waypoint.pipeline import Runtime, build_pipeline
from waypoint.state import WaypointState
from waypoint.upstream import Dialer, Endpoint, UpstreamPool, tcp_dial

log = structlog.get_logger("waypoint.server")


class HboneDialer:
    """Endpoints in the mesh are reached through HBONE to <pod ip>:15008 with the
    waypoint's own certificate (the destination sees the waypoint as its caller, as
    in Istio); the rest over plain TCP."""

    def __init__(self, pool: HboneClientPool, tls: TlsSource, port: int = HBONE_PORT) -> None:
        self.pool = pool
        self.tls = tls
        self.port = port

    async def __call__(self, endpoint: Endpoint) -> anyio.abc.ByteStream:
        if not endpoint.in_mesh:
            return await tcp_dial(endpoint)
        expected = SpiffeId.parse(endpoint.identity) if endpoint.identity else None
        try:
            return await self.pool.connect(self.tls, (endpoint.address, self.port),
                                           endpoint.key, expected_peer=expected)
        except HboneError as e:
            raise UpstreamConnectError(endpoint.key, f"HBONE tunnel failed: {e}") from None


async def serve_stream(stream: anyio.abc.ByteStream, handler: Handler, info: DownstreamInfo
                       ) -> None:
    """Sniff the protocol (the HTTP/2 preface, else HTTP/1.x) and serve the stream."""
    data = b""
    try:
        # A client that sends a first byte or two of "PRI * HTTP/2.0" (or "P...") and
        # stops must not hold the connection forever (slowloris): same head deadline.
        with anyio.fail_after(HEAD_TIMEOUT):
            while len(data) < len(PREFACE) and PREFACE.startswith(data):
                data += await stream.receive(65536)
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
            ConnectionError, TimeoutError):
        with contextlib.suppress(Exception):
            await stream.aclose()
        return
    try:
        if data.startswith(PREFACE):
            await Http2ServerConnection(stream, handler, info, data).serve()
        else:
            await Http1ServerConnection(stream, handler, info, data).serve()
    finally:
        with anyio.CancelScope(shield=True):
            await _lingering_close(stream)


async def _lingering_close(stream: anyio.abc.ByteStream, linger: float = 1.0) -> None:
    """End our side first and give the client a moment to end its own: closing a stream
    the client still holds open would reset it, and the client's TCP connection with it
    (a `Connection: close` response would end in RST instead of FIN)."""
    with contextlib.suppress(Exception):
        await stream.send_eof()
        with anyio.move_on_after(linger):
            while await stream.receive(65536):
                pass
    with contextlib.suppress(Exception):
        await stream.aclose()


@dataclass
class HboneListen:
    """Where and how to terminate HBONE: a bound listening socket and a provider of
    the server TLS context (called per connection, so renewals apply)."""

    sock: socket.socket
    server: HboneServer | None = None


class WaypointServer:
    def __init__(self, state: WaypointState, *, dial: Dialer = tcp_dial,
                 access_log: TextIO | None = None, exporter: OtlpExporter | None = None,
                 metrics: WaypointMetrics | None = None) -> None:
        self.state = state
        self.dial = dial
        self.metrics = metrics or WaypointMetrics()
        self.metrics.registry.register(AuthzCollector(  # enforced as deny-all, in force now
            lambda: (p for ps in self.state.config.authz.values() for p in ps)))
        self.access_log = AccessLog(access_log)
        self.exporter = exporter
        self.handler: Handler | None = None
        self.ready = anyio.Event()
        # Why the waypoint must not get traffic yet (e.g. no certificate): /healthz/ready
        # answers 503 with it while set.
        self.not_ready = ""
        self.connections = 0

    def update(self, config: WaypointConfig) -> None:
        self.state.update(config)
        log.info("config applied", version=config.version, services=sorted(config.served),
                 routes=sum(len(t) for t in config.routes.values()))

    async def run(self, *, plain: Sequence[anyio.abc.Listener[anyio.abc.SocketStream]] = (),
                  admin: Sequence[anyio.abc.Listener[anyio.abc.SocketStream]] = (),
                  hbone: HboneListen | None = None) -> None:
        async with anyio.create_task_group() as tg:
            pool = UpstreamPool(self.dial, tg)
            rt = Runtime(self.state, pool, tg, self.metrics, self.access_log, self.exporter)
            self.handler = build_pipeline(rt)
            if self.exporter is not None:
                tg.start_soon(self.exporter.run)
            for listener in plain:
                tg.start_soon(listener.serve, self._plain_connection, tg)
            for listener in admin:
                tg.start_soon(listener.serve, self._admin_connection, tg)
            if hbone is not None and hbone.server is not None:
                tg.start_soon(hbone.server.serve, hbone.sock)
            self.ready.set()
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await pool.aclose()
                self.access_log.flush()

    async def _plain_connection(self, stream: anyio.abc.SocketStream) -> None:
        assert self.handler is not None
        peer = stream.extra(anyio.abc.SocketAttribute.remote_address)
        info = DownstreamInfo(peer=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "")
        self.connections += 1
        await serve_stream(stream, self.handler, info)

    async def handle_hbone(self, request: HboneRequest) -> None:
        """HboneServer handler: every CONNECT is a client connection whose source
        identity is the peer certificate's and whose destination is :authority."""
        assert self.handler is not None
        stream = await request.accept()
        info = DownstreamInfo(source_principal=str(request.peer_identity),
                              destination=request.authority,
                              peer=f"{request.peer_address[0]}:{request.peer_address[1]}")
        self.connections += 1
        await serve_stream(stream, self.handler, info)

    async def _admin_connection(self, stream: anyio.abc.SocketStream) -> None:
        peer = stream.extra(anyio.abc.SocketAttribute.remote_address)
        # A unix socket is a worker's, asked by its supervisor (waypoint/workers.py).
        info = DownstreamInfo(peer=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple)
                              else "unix:")
        await serve_stream(stream, self._admin, info)

    async def _admin(self, head: RequestHead, body: BodySource, info: DownstreamInfo
                     ) -> Response:
        path = head.path
        if path == "/metrics" or path == "/stats/prometheus":
            data = self.metrics.exposition()
            return Response(200, [("content-type", "text/plain; version=0.0.4"),
                                  ("content-length", str(len(data)))], BytesBody(data))
        if path == "/healthz/live":  # the process serves: no reason to restart it
            return local_response(200, "live")
        if path == "/healthz/ready":
            if self.not_ready:
                return local_response(503, self.not_ready)
            ok = self.state.config.version != "" or bool(self.state.config.served)
            return local_response(200 if ok else 503, "ready" if ok else "no config yet")
        if path == "/config_dump":
            # Metrics and health are for scrapers and probes on the pod network; the
            # config (services, policies, identity) is for the operator on the pod
            # itself, as Envoy's and ztunnel's admin ports are loopback-only.
            if not _is_loopback(info.peer):
                return local_response(403, "/config_dump answers only on loopback")
            cfg = self.state.config
            dump = {
                "version": cfg.version, "waypoint": f"{cfg.namespace}/{cfg.name}",
                "identity": cfg.identity, "services": sorted(cfg.served),
                "routes": {k: len(v) for k, v in cfg.routes.items()},
                "trafficPolicies": {k: v.policy for k, v in cfg.traffic.items()},
                "authorizationPolicies": {k: [p.key for p in v] for k, v in cfg.authz.items()},
                # Enforced as deny-all until fixed (mesh/authz/compile.py): why, per policy.
                "uncompilablePolicies": {p.key: p.error for v in cfg.authz.values()
                                         for p in v if p.error},
            }
            data = json.dumps(dump, indent=2).encode()
            return Response(200, [("content-type", "application/json"),
                                  ("content-length", str(len(data)))], BytesBody(data))
        return local_response(404, "not found")


def _is_loopback(peer: str) -> bool:
    """Whether a "host:port" peer (host possibly an IPv6 or v4-mapped address) is local."""
    if peer == "unix:":  # a worker's admin socket, asked by its supervisor
        return True
    host = peer.rsplit(":", 1)[0].strip("[]").split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback

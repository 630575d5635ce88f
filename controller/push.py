"""Config push over gRPC: node agents and waypoints subscribe, receive the snapshot of
their scope, and ACK or NACK it. Changes are debounced (a burst of applies gives one
push) and a proxy is only sent a snapshot when its content changed.

The response serializer is the identity: snapshots are pre-serialized fragments (see
controller.snapshots), so the mesh-wide part is encoded once for all node agents."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog

from controller.metrics import ControllerMetrics
from controller.registry import Registry
from controller.snapshots import FragmentCache, SnapshotBuilder, SnapshotContent
from mesh.api import config_pb2 as pb
from mesh.identity.errors import NodeAuthError
from mesh.identity.node_token import authenticate

_log = structlog.get_logger("controller.push")
SERVICE_NAME = "ambientmesh.config.v1.ConfigService"
_TYPE: dict[int, str] = {int(pb.NODE): "node", int(pb.WAYPOINT): "waypoint"}


@dataclass
class ProxyRecord:
    """What status shows about one proxy; survives its disconnection."""

    kind: int
    name: str
    namespace: str
    node: str
    peer: str = ""
    connected: bool = False
    connected_at: float = 0.0
    disconnected_at: float = 0.0
    sent_version: str = ""
    sent_nonce: str = ""
    sent_at: float = 0.0
    acked_version: str = ""
    acked_at: float = 0.0
    last_nack: dict[str, Any] | None = None
    pushes: int = 0
    pending: SnapshotContent | None = None
    pending_since: float = 0.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def type(self) -> str:
        return _TYPE.get(self.kind, "unknown")

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def display_name(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


class PushServer:
    def __init__(
        self,
        registry: Registry,
        secret: bytes,
        metrics: ControllerMetrics,
        *,
        debounce: float = 0.05,
        max_delay: float = 0.5,
    ) -> None:
        self.registry = registry
        self._secret = secret
        self.metrics = metrics
        self.debounce = debounce
        self.max_delay = max_delay
        self.records: dict[tuple[int, str, str], ProxyRecord] = {}
        self._live: dict[int, ProxyRecord] = {}
        self._ids = itertools.count()
        self._dirty = asyncio.Event()
        self._first_change = 0.0
        self._last_change = 0.0
        self._builder: SnapshotBuilder | None = None
        self._fragments = FragmentCache()
        self._cache: dict[tuple[int, str, str], SnapshotContent] = {}
        registry.subscribe(self._on_change)

    # -- content --------------------------------------------------------------------

    def _current_builder(self) -> SnapshotBuilder:
        view = self.registry.view()
        if self._builder is None or self._builder.view is not view:
            self._builder = SnapshotBuilder(view, self._fragments)
            self._cache = {}
        return self._builder

    def content_for(self, kind: int, namespace: str, name: str) -> SnapshotContent:
        builder = self._current_builder()
        key = (kind, namespace, name)
        if key not in self._cache:
            if kind == pb.NODE:
                self._cache[key] = builder.node(name)
            else:
                self._cache[key] = builder.waypoint(namespace, name)
        return self._cache[key]

    # -- change propagation ---------------------------------------------------------

    def _on_change(self) -> None:
        now = time.monotonic()
        if not self._dirty.is_set():
            self._first_change = now
        self._last_change = now
        self._dirty.set()

    async def run(self) -> None:
        """The debounce loop: owned by the controller's task group."""
        while True:
            await self._dirty.wait()
            while True:
                now = time.monotonic()
                quiet_at = self._last_change + self.debounce
                deadline = self._first_change + self.max_delay
                if now >= quiet_at or now >= deadline:
                    break
                await asyncio.sleep(min(quiet_at, deadline) - now)
            since = self._first_change
            self._dirty.clear()
            self.distribute(since)

    def distribute(self, since: float) -> int:
        """Compute every connected proxy's content; wake those whose content changed."""
        started = time.monotonic()
        woken = 0
        for rec in list(self._live.values()):
            content = self.content_for(rec.kind, rec.namespace, rec.name)
            latest = rec.pending.version if rec.pending else rec.sent_version
            if content.version != latest:
                rec.pending = content
                rec.pending_since = rec.pending_since or since
                rec.wake.set()
                woken += 1
        self.metrics.build_seconds.observe(time.monotonic() - started)
        return woken

    # -- the RPC ----------------------------------------------------------------------

    def add_to_server(self, server: grpc.aio.Server) -> None:
        handler = grpc.stream_stream_rpc_method_handler(
            self._subscribe,
            request_deserializer=pb.SubscribeRequest.FromString,
            response_serializer=lambda b: b,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, {"Subscribe": handler}),))

    async def _authorize(self, context: grpc.aio.ServicerContext, hello: pb.Hello) -> str:
        try:
            node = authenticate(self._secret, context.invocation_metadata() or ())
        except NodeAuthError as e:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        if hello.kind == pb.NODE:
            if hello.name != node:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"node {node} may only subscribe as itself (hello named {hello.name!r})")
        elif hello.kind == pb.WAYPOINT:
            placement = self.registry.pod_placement(hello.namespace, hello.name)
            if placement is None or placement[0] != node:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"waypoint {hello.namespace}/{hello.name} is not scheduled on node {node}")
        else:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "hello.kind must be NODE or WAYPOINT")
        return node

    async def _subscribe(
        self, requests: AsyncIterator[pb.SubscribeRequest], context: grpc.aio.ServicerContext
    ) -> None:
        try:
            first = await asyncio.wait_for(anext(requests), timeout=30)
        except (StopAsyncIteration, TimeoutError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected a hello first")
        if first.WhichOneof("request") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be hello")
        hello = first.hello
        node = await self._authorize(context, hello)
        if hello.kind == pb.NODE:
            self.registry.register_node(hello.name, list(hello.pod_cidrs))
        key = (hello.kind, hello.namespace if hello.kind == pb.WAYPOINT else "", hello.name)
        old = self.records.get(key)
        rec = ProxyRecord(kind=key[0], namespace=key[1], name=key[2], node=node,
                          peer=context.peer() or "", connected=True,
                          connected_at=time.time())
        if old is not None:
            rec.acked_version, rec.last_nack = old.acked_version, old.last_nack
        if hello.last_version:
            rec.acked_version = hello.last_version
        self.records[key] = rec
        conn_id = next(self._ids)
        self._live[conn_id] = rec
        self.metrics.connected.labels(rec.type).inc()
        _log.info("proxy_connected", type=rec.type, proxy=rec.display_name, node=node,
                  peer=rec.peer, last_version=hello.last_version)
        rec.pending = self.content_for(rec.kind, rec.namespace, rec.name)
        rec.pending_since = time.monotonic()
        rec.wake.set()
        writer = asyncio.create_task(self._write_loop(rec, context))
        try:
            async for req in requests:
                if req.WhichOneof("request") == "ack":
                    self._on_ack(rec, req.ack)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            self._live.pop(conn_id, None)
            rec.connected = False
            rec.disconnected_at = time.time()
            self.metrics.connected.labels(rec.type).dec()
            _log.info("proxy_disconnected", type=rec.type, proxy=rec.display_name, node=node)

    async def _write_loop(self, rec: ProxyRecord, context: grpc.aio.ServicerContext) -> None:
        while True:
            await rec.wake.wait()
            rec.wake.clear()
            content, since = rec.pending, rec.pending_since
            if content is None:
                continue
            rec.pending, rec.pending_since = None, 0.0
            nonce = secrets.token_hex(8)
            data = content.encode(nonce)
            await context.write(data)
            now = time.monotonic()
            rec.sent_version, rec.sent_nonce, rec.sent_at = content.version, nonce, now
            rec.pushes += 1
            self.metrics.pushes.labels(rec.type).inc()
            self.metrics.push_bytes.labels(rec.type).inc(len(data))
            if since:
                self.metrics.convergence.observe(now - since)
            _log.debug("snapshot_sent", proxy=rec.display_name, version=content.version,
                       bytes=len(data))

    def _on_ack(self, rec: ProxyRecord, ack: pb.Ack) -> None:
        if ack.nonce != rec.sent_nonce:
            _log.debug("stale_ack", proxy=rec.display_name, nonce=ack.nonce)
            return
        self.metrics.ack_latency.labels(rec.type).observe(time.monotonic() - rec.sent_at)
        if ack.error:
            rec.last_nack = {"version": ack.version, "error": ack.error, "at": time.time()}
            self.metrics.rejects.labels(rec.type).inc()
            _log.warning("snapshot_nacked", proxy=rec.display_name, version=ack.version,
                         error=ack.error)
        else:
            rec.acked_version, rec.acked_at = ack.version, time.time()

    # -- status -----------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        out = []
        for rec in sorted(self.records.values(), key=lambda r: (r.kind, r.namespace, r.name)):
            latest = self.content_for(rec.kind, rec.namespace, rec.name).version
            out.append({
                "type": rec.type, "name": rec.display_name, "node": rec.node,
                "peer": rec.peer, "connected": rec.connected,
                "connectedAt": rec.connected_at or None,
                "disconnectedAt": rec.disconnected_at or None,
                "latestVersion": latest, "sentVersion": rec.sent_version,
                "ackedVersion": rec.acked_version, "inSync": rec.acked_version == latest,
                "pushes": rec.pushes, "lastNack": rec.last_nack,
            })
        return out

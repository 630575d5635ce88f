"""ConfigSubscriber: one long-lived subscription to the controller's ConfigService.

Each snapshot is handed to the caller's `apply` callback; returning means ACK, raising
means NACK (with the exception text) and the last good snapshot stays in force. When
the stream breaks, the last good snapshot is kept and the subscriber reconnects with
exponential backoff and jitter; the hello carries the version it holds, and a
snapshot with that same version is ACKed without calling `apply` again."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence

import grpc
import structlog

from mesh.api import config_pb2 as pb
from mesh.api import config_pb2_grpc as pb_grpc
from mesh.backoff import Backoff
from mesh.identity.node_token import auth_metadata
from mesh.identity.token_source import TokenFileError, TokenSource, token_source
from mesh.xds.errors import SubscriptionError

_log = structlog.get_logger("mesh.xds")
ApplyFn = Callable[[pb.Snapshot], Awaitable[None] | None]
_FATAL_HINT = {
    grpc.StatusCode.UNAUTHENTICATED: "check the node token and node name",
    grpc.StatusCode.PERMISSION_DENIED: "check that this proxy subscribes as its own node",
}


class ConfigSubscriber:
    def __init__(
        self,
        target: str,
        *,
        kind: int,
        name: str,
        node: str,
        token: str | TokenSource,
        apply: ApplyFn,
        namespace: str = "",
        pod_cidrs: Sequence[str] = (),
        backoff: Backoff | None = None,
    ) -> None:
        self.target = target
        self.kind = kind
        self.name = name
        self.namespace = namespace
        self.pod_cidrs = list(pod_cidrs)
        self.node = node
        self._token = token_source(token)  # asked again on every (re)connection
        self._apply = apply
        self.backoff = backoff or Backoff()
        self.snapshot: pb.Snapshot | None = None
        self.connected = False
        self.connects = 0
        self.last_error = ""
        self.nacks = 0
        self._updated = asyncio.Event()

    @property
    def version(self) -> str:
        return self.snapshot.version if self.snapshot is not None else ""

    async def run(self) -> None:
        """Subscribe forever (cancel to stop), reconnecting after every failure."""
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (grpc.aio.AioRpcError, SubscriptionError, TokenFileError, OSError) as e:
                self.last_error = self._describe(e)
            finally:
                self.connected = False
            delay = self.backoff.next_delay()
            _log.warning("controller_unreachable", target=self.target, error=self.last_error,
                         retry_in=round(delay, 3), version=self.version)
            await asyncio.sleep(delay)

    @staticmethod
    def _describe(e: Exception) -> str:
        if isinstance(e, grpc.aio.AioRpcError):
            hint = _FATAL_HINT.get(e.code())
            text = f"{e.code().name}: {e.details()}"
            return f"{text} ({hint})" if hint else text
        return str(e)

    async def _session(self) -> None:
        metadata = auth_metadata(self.node, self._token())
        async with grpc.aio.insecure_channel(self.target, options=[
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 20_000),
        ]) as channel:
            stub = pb_grpc.ConfigServiceStub(channel)
            call = stub.Subscribe(metadata=metadata)  # type: ignore[call-arg]
            try:
                await call.write(pb.SubscribeRequest(hello=pb.Hello(
                    kind=self.kind, name=self.name,  # type: ignore[arg-type]
                    namespace=self.namespace, pod_cidrs=self.pod_cidrs,
                    last_version=self.version)))
                while True:
                    snap = await call.read()
                    if not isinstance(snap, pb.Snapshot):  # grpc.aio.EOF
                        raise SubscriptionError(f"controller {self.target} closed the stream")
                    if not self.connected:
                        self.connected = True
                        self.connects += 1
                        self.backoff.reset()
                        _log.info("controller_connected", target=self.target,
                                  version=snap.version)
                    await call.write(pb.SubscribeRequest(ack=await self._handle(snap)))
            finally:
                call.cancel()

    async def _handle(self, snap: pb.Snapshot) -> pb.Ack:
        if self.snapshot is not None and snap.version == self.snapshot.version:
            return pb.Ack(version=snap.version, nonce=snap.nonce)
        try:
            result = self._apply(snap)
            if inspect.isawaitable(result):
                await result
        except Exception as e:  # the callback's failure is a NACK, never a crash
            self.nacks += 1
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            _log.warning("snapshot_rejected", version=snap.version, error=error,
                         kept=self.version)
            return pb.Ack(version=snap.version, nonce=snap.nonce, error=error)
        self.snapshot = snap
        self._updated.set()
        self._updated = asyncio.Event()
        _log.info("snapshot_applied", version=snap.version)
        return pb.Ack(version=snap.version, nonce=snap.nonce)

    async def wait_for(self, predicate: Callable[[pb.Snapshot], bool],
                       timeout: float) -> pb.Snapshot:
        """The first applied snapshot satisfying `predicate` (TimeoutError after timeout)."""
        async with asyncio.timeout(timeout):
            while True:
                if self.snapshot is not None and predicate(self.snapshot):
                    return self.snapshot
                await self._updated.wait()

"""A node proxy worker process (see workers.py): serves the connections the agent hands
it, with the snapshot and certificates the agent pushes, until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
import ssl
import sys
import threading
from collections.abc import Callable

import structlog
from prometheus_client import generate_latest

from ebpf.redirector import Redirector
from mesh.api import config_pb2 as pb
from mesh.hbone import StaticTls
from mesh.identity import tls
from mesh.identity.bundle import TrustBundle
from mesh.identity.spiffe import SpiffeId
from mesh.identity.svid import CertifiedKey
from mesh.logs import configure_logging
from nodeagent import worker_channel
from nodeagent.accesslog import AccessLog
from nodeagent.certs import CertificateUnavailableError
from nodeagent.metrics import ProxyMetrics
from nodeagent.proxy.handlers import (
    ProxyContext,
    handle_inbound_plaintext,
    handle_outbound,
    limited,
    peer_address,
)
from nodeagent.proxy.pod_listeners import PodEndpoint, track
from nodeagent.proxy.splice import Splicer
from nodeagent.proxy.tunnel import Tunnels
from nodeagent.state import ProxyState

log = structlog.get_logger("nodeagent.worker")
METRICS_EVERY = 2.0
DRAIN_SECONDS = 5.0


class PushedCertificates:
    """Certificates the agent issued and pushed: the worker never talks to the CA."""

    def __init__(self) -> None:
        self.contexts: dict[str, tuple[ssl.SSLContext, ssl.SSLContext, dt.datetime]] = {}

    def install(self, identity: str, material: bytes) -> None:
        data = json.loads(material)
        ck = CertifiedKey.from_pem(data["key"].encode(), data["chain"].encode())
        bundle = TrustBundle.from_pem(SpiffeId.parse(identity).trust_domain,
                                      data["bundle"].encode())
        self.contexts[identity] = (tls.client_context(ck, bundle),
                                   tls.server_context(ck, bundle), ck.not_after)

    def _get(self, identity: SpiffeId, server: bool) -> ssl.SSLContext:
        entry = self.contexts.get(identity.uri)
        if entry is None or entry[2] <= dt.datetime.now(dt.UTC):
            raise CertificateUnavailableError(f"no valid certificate for {identity} in worker")
        client_ctx, server_ctx, _ = entry
        return server_ctx if server else client_ctx

    def certificate_error(self, identity: SpiffeId) -> str | None:
        try:
            self._get(identity, server=False)
        except CertificateUnavailableError as e:
            return str(e)
        return None

    def client_tls(self, identity: SpiffeId) -> StaticTls:
        return StaticTls(identity.uri, lambda: self._get(identity, server=False))

    def server_context_provider(self, identity: SpiffeId) -> Callable[[], ssl.SSLContext]:
        return lambda: self._get(identity, server=True)


class Worker:
    def __init__(self, channel: socket.socket, pin_name: str) -> None:
        self.channel = channel
        self.redirector = Redirector.open(pin_name)
        self.certs = PushedCertificates()
        self.metrics = ProxyMetrics()
        self.ctx = ProxyContext(ProxyState(), self.metrics, AccessLog(), Tunnels(self.certs),
                                self.redirector.original_destination,
                                splicer=Splicer.open(pin_name))
        self.pods: dict[str, PodEndpoint] = {}
        self.connections: set[asyncio.Task[None]] = set()
        self.stop = asyncio.Event()

    def handle(self, msg: worker_channel.Message) -> None:
        op = msg.header["op"]
        if op == "snapshot" and msg.payload:
            self.ctx.state = ProxyState.from_snapshot(pb.Snapshot.FromString(msg.payload))
        elif op == "cert":
            self.certs.install(msg.header["identity"], msg.payload)
        elif op == "pod":
            pod = PodEndpoint(**msg.header["pod"])
            self.pods[pod.key] = pod
            self.ctx.local_pods.add(pod)  # same-node connections to it skip the tunnel
        elif op == "unpod":
            self.pods.pop(msg.header["key"], None)
            self.ctx.local_pods.remove_key(msg.header["key"])
        elif op == "conn":
            sock = socket.socket(fileno=msg.fds[0])
            sock.setblocking(False)
            endpoint = self.pods.get(msg.header["pod"])
            if endpoint is None:  # the pod left meanwhile
                sock.close()
                return
            kind = msg.header["kind"]
            if kind == "outbound":  # per source pod, per peer address: as in the agent
                work = limited(self.ctx, kind, endpoint.key, sock,
                               handle_outbound(self.ctx, endpoint, sock))
            else:
                work = limited(self.ctx, kind, peer_address(sock), sock,
                               handle_inbound_plaintext(self.ctx, endpoint, sock))
            if work is None:  # over the source's cap: reset already
                return
            track(self.connections, asyncio.create_task(work),
                  lambda _: self.metrics.refused("handler_error", kind))
        elif op == "stop":
            self.stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()

        def reader() -> None:  # blocking reads off the loop; messages applied in order
            while True:
                try:
                    msg = worker_channel.receive(self.channel)
                except OSError:
                    msg = None
                if msg is None:
                    loop.call_soon_threadsafe(self.stop.set)
                    return
                loop.call_soon_threadsafe(self._apply, msg)

        threading.Thread(target=reader, daemon=True).start()
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), METRICS_EVERY)
            with contextlib.suppress(OSError):
                worker_channel.send(self.channel, {"op": "metrics"},
                                    generate_latest(self.metrics.registry))
        if self.connections:
            await asyncio.wait(set(self.connections), timeout=DRAIN_SECONDS)
        with contextlib.suppress(OSError):
            worker_channel.send(self.channel, {"op": "metrics"},
                                generate_latest(self.metrics.registry))

    def _apply(self, msg: worker_channel.Message) -> None:
        try:
            self.handle(msg)
        except Exception as e:  # a bad message must not take the worker's pods down
            log.error("worker message failed", op=msg.header.get("op"), error=str(e))


def main() -> None:
    configure_logging("info")
    channel = socket.socket(fileno=int(sys.argv[1]))
    import uvloop

    uvloop.run(Worker(channel, sys.argv[2]).run())


if __name__ == "__main__":
    main()

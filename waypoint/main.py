"""`ambient-waypoint`: the L7 proxy process.

In the mesh it subscribes to the controller for its WAYPOINT snapshot, gets its own
certificate from the controller's CA (authenticated with its node's token) and
terminates HBONE on 15008. For tests and debugging, `--listen` adds plain HTTP
listeners and `--snapshot` reads a snapshot from a JSON file instead of the
controller."""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import math
import socket
import ssl
import sys
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import anyio
import click
import grpc.aio
import structlog
from google.protobuf import json_format

from mesh.api import config_pb2 as pb
from mesh.hbone import HboneClientPool, HboneServer, StaticTls, TunnelSettings
from mesh.identity import CertifiedKey, TrustBundle
from mesh.identity.ca_client import CertificateClient
from mesh.identity.csr import build_csr, generate_key
from mesh.identity.errors import CertificateRefusedError, IdentityError
from mesh.identity.spiffe import SpiffeId
from mesh.identity.svid import load_pem_chain
from mesh.identity.tls import client_context, server_context
from mesh.identity.token_source import TokenFile, TokenFileError
from mesh.logs import configure_logging
from mesh.ports import HBONE_PORT, METRICS_PORT
from mesh.xds import Backoff, ConfigSubscriber
from waypoint.config import WaypointConfig, build, split_hostport
from waypoint.errors import WaypointError
from waypoint.otlp import OtlpExporter
from waypoint.server import HboneDialer, WaypointServer
from waypoint.state import WaypointState
from waypoint.upstream import Dialer, tcp_dial
from waypoint.workers import (
    MAX_WORKERS,
    admin_address,
    die_with_supervisor,
    hold_port,
    supervise,
)

log = structlog.get_logger("waypoint.main")


def load_snapshot(path: Path) -> pb.Snapshot:
    try:
        return json_format.Parse(path.read_text(), pb.Snapshot())
    except (OSError, json_format.ParseError) as e:
        raise click.BadParameter(f"{path}: not a readable snapshot JSON ({e})") from None


class Identity:
    """The waypoint's certificate from the controller's CA, renewed at half-life;
    TLS contexts are rebuilt on renewal and picked up by new connections."""

    def __init__(self, client: CertificateClient, namespace: str, pod: str,
                 trust_domain: str, service_account: str) -> None:
        self.client = client
        self.namespace = namespace
        self.pod = pod
        self.spiffe = SpiffeId.for_workload(namespace, service_account, trust_domain)
        self.server_ctx: ssl.SSLContext | None = None
        self.client_ctx: ssl.SSLContext | None = None
        self.key: CertifiedKey | None = None

    async def fetch(self) -> None:
        key = generate_key()
        signed = await self.client.create_certificate(build_csr(key, self.spiffe),
                                                      self.namespace, self.pod)
        ck = CertifiedKey(key, load_pem_chain(signed.chain_pem))
        bundle: TrustBundle = signed.bundle
        self.key = ck
        self.spiffe = signed.identity
        self.server_ctx = server_context(ck, bundle)
        self.client_ctx = client_context(ck, bundle)
        log.info("certificate issued", identity=str(signed.identity),
                 not_after=ck.not_after.isoformat())

    async def obtain(self, backoff: Backoff, server: WaypointServer) -> None:
        """The first certificate, asked until the CA signs it. A refusal is normal for
        a while (the Gateway was just created or recreated, the API server has not
        shown the controller this pod yet), and an unreachable CA comes back: either
        way one line per attempt says why, and the waypoint reports not ready."""
        while True:
            try:
                await self.fetch()
            except IdentityError as e:
                delay = backoff.next_delay()
                code = e.code if isinstance(e, CertificateRefusedError) else None
                what = "refused" if code else "unavailable"
                server.not_ready = f"no certificate yet (certificate {what}): {e}"
                log.warning(f"certificate {what}", code=code,
                            error=str(e), attempt=backoff.attempt, retry_in=round(delay, 2),
                            identity=str(self.spiffe))
                await anyio.sleep(delay)
                continue
            server.not_ready = ""
            return

    async def renew_forever(self, server: WaypointServer) -> None:
        """Renew at half-life; a failed renewal keeps the current certificate and is
        retried with backoff. Once the current one has expired (peers refuse it) the
        waypoint reports not ready, saying why, until a renewal succeeds."""
        backoff = Backoff(initial=1.0, maximum=30.0)
        while True:
            assert self.key is not None
            wait = (self.key.renew_at() - dt.datetime.now(dt.UTC)).total_seconds()
            await anyio.sleep(max(5.0, wait))
            while True:
                try:
                    await self.fetch()
                    break
                except Exception as e:  # keep the current certificate; try again soon
                    not_after = self.key.not_after
                    left = (not_after - dt.datetime.now(dt.UTC)).total_seconds()
                    if left <= 0:
                        server.not_ready = (f"certificate expired at {not_after.isoformat()} "
                                            f"and its renewal failed: {e}")
                    # Not past the expiry unnoticed: wake up then at the latest.
                    delay = backoff.next_delay() if left <= 0 else \
                        min(backoff.next_delay(), max(0.1, left))
                    log.warning("certificate renewal failed", error=str(e), expired=left <= 0,
                                code=getattr(e, "code", None), retry_in=round(delay, 2))
                    await anyio.sleep(delay)
            backoff.reset()
            server.not_ready = ""

    def server_context(self) -> ssl.SSLContext:
        assert self.server_ctx is not None
        return self.server_ctx

    def client_context(self) -> ssl.SSLContext:
        assert self.client_ctx is not None
        return self.client_ctx


# Young-generation threshold of the cyclic GC (CPython's default: 700 allocations).
# A request allocates a few hundred container objects, nearly all freed by reference
# counting when it ends; with the default, a collection ran every request or two and
# traversed the objects of every request in flight (py-spy --native: gc_collect_main
# 8.6 % of the waypoint's samples). Up to this many young objects cost a few MB.
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Before serving: what the imports built (grpc, protobuf, cryptography, ...) is
    never garbage, so it is frozen out of every later collection, and the young
    generation is collected every GC_YOUNG_THRESHOLD allocations."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _tunnel_settings(opts: dict[str, object]) -> TunnelSettings:
    """The waypoint's HBONE legs, both ways: writes batched per event-loop turn by
    default (--hbone-flush-gap inf). The waypoint answers many small requests on few
    tunnels; sending each message at once (the node proxy's default, for latency at
    low rates) made a TLS record and a write() per message: py-spy showed the flush
    at 32 % of the waypoint's busy samples."""
    return TunnelSettings(flush_gap=float(opts["hbone_flush_gap"]))  # type: ignore[arg-type]


def _open_access_log(spec: str) -> TextIO | None:
    if spec == "none":
        return None
    if spec == "stdout":
        return sys.stdout
    return open(spec, "a", buffering=1)  # lives as long as the process


def _address(a: str, hint: str, default: int | None = None) -> tuple[str, int]:
    host, port = split_hostport(a)
    if port is None and default is None:
        raise click.BadParameter(f"{a!r}: expected HOST:PORT", param_hint=hint)
    return host or "0.0.0.0", port if port is not None else int(default or 0)


async def _listeners(addrs: tuple[str, ...], reuse_port: bool = False
                     ) -> list[anyio.abc.Listener[anyio.abc.SocketStream]]:
    """Plain listeners; with reuse_port (workers) every worker binds the same port."""
    out: list[anyio.abc.Listener[anyio.abc.SocketStream]] = []
    for a in addrs:
        host, port = _address(a, "--listen")
        out.append(await anyio.create_tcp_listener(local_host=host, local_port=port,
                                                   reuse_port=reuse_port))
    return out


def _hbone_socket(addr: str, reuse_port: bool = False) -> socket.socket:
    host, port = _address(addr, "--hbone-addr", HBONE_PORT)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


async def _run(opts: dict[str, object]) -> None:
    snapshot_file = opts["snapshot"]
    config = WaypointConfig(name=str(opts["name"]), namespace=str(opts["namespace"]))
    if isinstance(snapshot_file, Path):
        config = build(load_snapshot(snapshot_file))
    state = WaypointState(config)
    if int(opts["worker_index"]) >= 0:  # type: ignore[call-overload]
        # One of N workers: local rate and connection limits hold 1/N each.
        state.set_workers(int(opts["workers"]))  # type: ignore[call-overload]
    exporter = None
    if opts["otlp_endpoint"]:
        exporter = OtlpExporter(str(opts["otlp_endpoint"]),
                                f"{opts['name']}.{opts['namespace']}")
    worker = int(opts["worker_index"]) >= 0  # type: ignore[call-overload]
    plain = await _listeners(opts["listen"], reuse_port=worker)  # type: ignore[arg-type]
    admin: list[anyio.abc.Listener[anyio.abc.SocketStream]] = []
    if opts["metrics_addr"]:
        admin = await _listeners((str(opts["metrics_addr"]),))
    if opts["admin_socket"]:  # a worker: its supervisor asks here
        admin.append(await anyio.create_unix_listener(admin_address(str(opts["admin_socket"]))))
    controller = opts["controller"]
    dial: Dialer = tcp_dial
    identity: Identity | None = None
    channel = None
    if controller:
        token_file = opts["token_file"]
        if not isinstance(token_file, Path):
            raise click.UsageError("--controller needs --token-file (the node's token)")
        # Asked again for every CSR and every (re)subscription: projected tokens rotate.
        token = TokenFile(token_file)
        try:
            token()  # fail now, naming the file, if it cannot be read
        except TokenFileError as e:
            raise click.BadParameter(str(e), param_hint="--token-file") from None
        node = str(opts["node"])
        channel = grpc.aio.insecure_channel(str(controller))
        identity = Identity(CertificateClient(channel, node, token), str(opts["namespace"]),
                            str(opts["pod"] or opts["name"]), str(opts["trust_domain"]),
                            str(opts["service_account"] or opts["name"]))
        hbone_pool = HboneClientPool(settings=_tunnel_settings(opts))
        dial = HboneDialer(hbone_pool, StaticTls(str(identity.spiffe), identity.client_context))
    server = WaypointServer(state, dial=dial, access_log=_open_access_log(str(opts["access_log"])),
                            exporter=exporter)
    hbone_sock = None
    if identity is not None:
        server.not_ready = "no certificate yet: asking the controller's CA"
        # Bound now: a taken port fails at start, not later. A worker binds only once
        # it has its certificate (below): a listening socket in the SO_REUSEPORT group
        # gets its share of new connections, which would wait in its backlog meanwhile;
        # its supervisor holds the port and checked it at start.
        if opts["hbone_addr"] and not worker:
            hbone_sock = _hbone_socket(str(opts["hbone_addr"]))

    def apply(snap: pb.Snapshot) -> None:
        server.update(build(snap))  # RouteConfigError -> NACK, last good stays

    async with anyio.create_task_group() as tg:
        # Admin first: /healthz/ready says why the waypoint is not ready meanwhile.
        tg.start_soon(lambda: server.run(plain=plain, admin=admin))
        await server.ready.wait()
        if controller and identity is not None:
            # No HBONE and no config before the certificate: nothing to serve with.
            await identity.obtain(Backoff(initial=0.5, maximum=30.0), server)
            if worker and opts["hbone_addr"]:
                hbone_sock = _hbone_socket(str(opts["hbone_addr"]), reuse_port=True)
            if hbone_sock is not None:
                settings = _tunnel_settings(opts)
                if opts["hbone_max_streams"]:
                    settings = replace(settings,
                                       max_concurrent_streams=int(opts["hbone_max_streams"]))  # type: ignore[call-overload]
                tg.start_soon(HboneServer(identity.server_context, server.handle_hbone,
                                          settings=settings).serve, hbone_sock)
            sub = ConfigSubscriber(str(controller), kind=pb.WAYPOINT, name=str(opts["name"]),
                                   namespace=str(opts["namespace"]), node=str(opts["node"]),
                                   token=token, apply=apply)
            tg.start_soon(sub.run)
            tg.start_soon(identity.renew_forever, server)
        log.info("waypoint ready", name=opts["name"], namespace=opts["namespace"],
                 listen=list(opts["listen"]), metrics=opts["metrics_addr"],  # type: ignore[call-overload]
                 hbone=opts["hbone_addr"] if hbone_sock else None)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--name", required=True, help="Name of the waypoint Gateway.")
@click.option("--namespace", default="default", show_default=True,
              help="Namespace of the waypoint Gateway.")
@click.option("--controller", envvar="AMBIENT_CONTROLLER", default=None,
              help="Controller gRPC address (host:port).")
@click.option("--node", envvar="NODE_NAME", default="",
              help="Node this waypoint runs on (its token authenticates to the CA).")
@click.option("--token-file", envvar="AMBIENT_TOKEN_FILE",
              type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="File holding the node's bootstrap token.")
@click.option("--pod", envvar="POD_NAME", default="",
              help="The waypoint's own pod name (for its certificate).")
@click.option("--service-account", default="", help="Service account (default: --name).")
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option("--listen", multiple=True,
              help="Plain HTTP listener HOST:PORT (tests, debugging); repeatable.")
@click.option("--hbone-addr", default=f"0.0.0.0:{HBONE_PORT}", show_default=True,
              help="Where to terminate HBONE (with --controller).")
@click.option("--metrics-addr", default=f"0.0.0.0:{METRICS_PORT}", show_default=True,
              help="Admin listener: /metrics, /healthz/ready, /config_dump ('' disables).")
@click.option("--snapshot", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              default=None, help="Static snapshot JSON instead of the controller.")
@click.option("--access-log", default="stdout", show_default=True,
              help="stdout, none, or a file path: one JSON line per request.")
@click.option("--otlp-endpoint", default=None,
              help="OTLP/HTTP collector base URL (spans go to <url>/v1/traces).")
@click.option("--log-level", default="info", show_default=True)
@click.option("--workers", type=click.IntRange(1, MAX_WORKERS), default=1, show_default=True,
              help="Waypoint processes sharing the ports (SO_REUSEPORT); above 1 this "
                   "process supervises them and serves the metrics address for all.")
@click.option("--hbone-max-streams", type=click.IntRange(0, 1 << 20), default=0,
              help="Streams one HBONE connection may carry (SETTINGS_MAX_CONCURRENT_"
                   "STREAMS; 0: the default). With --workers, a node proxy's tunnels "
                   "are spread over the workers per connection: a lower limit makes it "
                   "open more connections.")
@click.option("--hbone-flush-gap", type=click.FloatRange(min=0), default=math.inf,
              show_default=True,
              help="Seconds: an HBONE write goes out at once unless the previous one was "
                   "sent less than this ago, else with the rest of the event-loop turn "
                   "(inf: always batched per turn).")
@click.option("--worker-index", type=int, default=-1, hidden=True)
@click.option("--admin-socket", default="", hidden=True)
def main(**opts: object) -> None:
    """Run a waypoint: the L7 proxy for the services that use it."""
    configure_logging(str(opts["log_level"]))
    if not opts["controller"] and not opts["snapshot"]:
        raise click.UsageError("give --controller (mesh mode) or --snapshot (static mode)")
    if int(opts["workers"]) > 1 and int(opts["worker_index"]) < 0:  # type: ignore[call-overload]
        _supervise(opts)
        return
    if int(opts["worker_index"]) >= 0:  # type: ignore[call-overload]
        die_with_supervisor()
    tune_gc()
    try:
        anyio.run(_run, opts, backend_options={"use_uvloop": True})
    except KeyboardInterrupt:
        pass
    except WaypointError as e:
        raise click.ClickException(str(e)) from None


def worker_argv(opts: dict[str, object], index: int, admin: str) -> list[str]:
    """The command line of worker `index`: this one's options, with the metrics address
    replaced by the admin socket its supervisor asks."""
    argv = [sys.executable, "-m", "waypoint.main"]
    skip = {"worker_index", "admin_socket", "metrics_addr"}  # --workers N: its share
    for param in main.params:
        if param.name in skip or not isinstance(param, click.Option):
            continue
        value = opts.get(param.name or "")
        if value is None or value == () or param.is_flag:
            continue
        flag = max(param.opts, key=len)
        for item in (value if param.multiple else (value,)):  # type: ignore[attr-defined]
            argv += [flag, str(item)]
    return [*argv, "--metrics-addr", "", "--worker-index", str(index),
            "--admin-socket", admin]


def _supervise(opts: dict[str, object]) -> None:
    """--workers N: hold the ports, start N workers, serve the admin address for all."""
    held = []
    try:
        if opts["controller"] and opts["hbone_addr"]:
            held.append(hold_port(_address(str(opts["hbone_addr"]), "--hbone-addr",
                                           HBONE_PORT)))
        for a in opts["listen"]:  # type: ignore[attr-defined]
            held.append(hold_port(_address(a, "--listen")))
    except OSError as e:
        for s in held:
            s.close()
        raise click.ClickException(f"cannot bind a waypoint port: {e}") from None

    async def run() -> None:
        admin = await _listeners((str(opts["metrics_addr"]),)) if opts["metrics_addr"] else []
        await supervise(int(opts["workers"]), lambda i, path: worker_argv(opts, i, path),  # type: ignore[call-overload]
                        admin, held)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(run, backend_options={"use_uvloop": True})


if __name__ == "__main__":
    main()

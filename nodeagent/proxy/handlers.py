"""The three connection handlers of the node proxy, one per capture path.

Outbound (15001): original destination -> plan -> HBONE / plaintext -> relay.
Inbound HBONE (15008): verified peer -> L4 authorization -> the app at the pod's
own address. Inbound plaintext (15006): PeerAuthentication STRICT refuses; PERMISSIVE
authorizes (no principal) and relays, labelled plaintext. Inbound never reaches the
proxy's own ports nor the pod's loopback, and a pod bound to a waypoint takes only
what its waypoint sends (nodeagent.proxy.delivery).
Every connection ends in one access-log record and the Istio TCP metrics. A tunnel
that cannot be opened in time or dies under a connection (link cut, peer hung) resets
the app's connection, is logged as outcome "error" with the reason naming the peer,
and counted in ambient_tunnel_failures_total.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from ebpf.errors import OriginalDestinationUnknown
from mesh import hbone
from mesh.api import config_pb2 as pb
from mesh.authz import AuthzCollector
from mesh.identity.spiffe import SpiffeId
from mesh.telemetry.labels import workload_name
from nodeagent import admission, authz
from nodeagent.accesslog import AccessLog, ConnectionRecord
from nodeagent.balance import EndpointPicker
from nodeagent.errors import ConnectionRefusedByMesh, NoHealthyEndpoint, WaypointUnavailable
from nodeagent.metrics import ConnectionLabels, ProxyMetrics, caller
from nodeagent.outbound_plan import Hop, Transport, plan
from nodeagent.proxy import delivery, same_node
from nodeagent.proxy.pod_listeners import PodEndpoint, PodListeners, accept_loop
from nodeagent.proxy.relay import Transfer, relay_sockets
from nodeagent.proxy.source_limit import Release, SourceLimit, cap_from_environment
from nodeagent.proxy.splice import Splicer
from nodeagent.proxy.streams import dial
from nodeagent.proxy.tunnel import (
    InboundTunnelRequest,
    MissingCertificate,
    TunnelFailed,
    TunnelRefused,
    Tunnels,
    failure_kind,
)
from nodeagent.state import ProxyState

log = structlog.get_logger("nodeagent.proxy")

OriginalDestination = Callable[[socket.socket], tuple[str, int]]
CONNECT_TIMEOUT = 5.0
DENIED = 401  # what ztunnel answers a CONNECT its RBAC refuses
BAD_TARGET = 400  # a CONNECT to something that is not this pod's app
UPSTREAM_REFUSED = 503
Upstream = hbone.HboneStream | socket.socket


@dataclass
class ProxyContext:
    """Everything the handlers share; the state is swapped whole on each snapshot."""

    state: ProxyState
    metrics: ProxyMetrics
    access_log: AccessLog
    tunnels: Tunnels
    original_destination: OriginalDestination
    picker: EndpointPicker = field(default_factory=EndpointPicker)
    splicer: Splicer | None = None  # the kernel splice of same-node connections
    same_node_fast_path: bool = field(default_factory=same_node.enabled_from_environment)
    local_pods: same_node.LocalPods = field(default_factory=same_node.LocalPods)
    live: same_node.LiveConnections = field(default_factory=same_node.LiveConnections)
    source_limit: SourceLimit = field(init=False)

    def __setattr__(self, name: str, value: Any) -> None:
        """A new state (snapshot) re-authorizes every live same-node connection with
        the decisions new ones get: one the state now denies is cut."""
        super().__setattr__(name, value)
        if name == "state" and "live" in self.__dict__:
            self.live.reauthorize()

    def __post_init__(self) -> None:
        # Per-process cap per source (--max-connections-per-source via the environment).
        self.source_limit = SourceLimit(cap_from_environment(), self.metrics)
        self.tunnels.register_metrics(self.metrics.registry)  # warming, pool (warm.py)
        # Policies enforced as deny-all because they could not be compiled, read from
        # the state in force at each scrape.
        self.metrics.registry.register(
            AuthzCollector(lambda: self.state.authorizations.values()))

    def workload_of(self, pod: PodEndpoint) -> pb.Workload | None:
        return self.state.workloads_by_uid.get(pod.uid) or self.state.workload_at(pod.ip)


def _names(wl: pb.Workload | None) -> tuple[str, str]:
    """(workload, namespace) as the metric labels name them (mesh.telemetry.labels)."""
    return (workload_name(wl.name, wl.labels), wl.namespace) if wl is not None else \
        ("unknown", "unknown")


def _service_host(service: str | None, trust_domain: str) -> str:
    if not service:
        return "unknown"
    ns, name = service.split("/", 1)
    return f"{name}.{ns}.svc.{trust_domain}"


async def _splice(ctx: ProxyContext, downstream: socket.socket, upstream: Upstream,
                  labels: ConnectionLabels, record: ConnectionRecord,
                  downstream_is_client: bool = True) -> None:
    """Relay until both directions end; account bytes in the request/response sense."""
    ctx.metrics.connection_opened(labels)
    transfer = Transfer()
    try:
        if isinstance(upstream, socket.socket):
            await relay_sockets(downstream, upstream, transfer)
        else:  # an HBONE stream: the callback-driven relay of mesh.hbone
            result = await hbone.relay(upstream, downstream)
            up, down = result.to_stream, result.from_stream
            transfer.request_bytes, transfer.response_bytes = (
                (up, down) if downstream_is_client else (down, up))
            if result.reset:
                failure = upstream.failure
                if failure is not None:  # the tunnel died under it: say why, count it
                    record.outcome, record.reason = "error", str(failure)
                    ctx.metrics.tunnel_failed(*failure_kind(failure, relaying=True))
                else:
                    record.outcome, record.reason = "reset", "connection reset"
    finally:
        record.request_bytes = transfer.request_bytes
        record.response_bytes = transfer.response_bytes
        ctx.metrics.connection_closed(labels, transfer.request_bytes, transfer.response_bytes)


async def _watched(ctx: ProxyContext, direction: str, record: ConnectionRecord,
                   recheck: same_node.Recheck, sockets: tuple[socket.socket, ...],
                   relay: Coroutine[Any, Any, None]) -> None:
    """Run `relay` as a live connection each new snapshot re-authorizes (`recheck`);
    one the state now denies is reset (the relay is cancelled: its sockets reset,
    an HBONE stream reset) and logged as denied by the policy that denies it."""
    conn = same_node.LiveConnection(recheck, sockets)
    ctx.live.live.add(conn)
    conn.task = asyncio.ensure_future(relay)
    try:
        await conn.task
    except asyncio.CancelledError:
        if not conn.cut_reason:
            raise
        record.outcome, record.reason, record.policy = ("denied", conn.cut_reason,
                                                        conn.cut_policy)
        ctx.metrics.connections_cut.labels(direction).inc()
    finally:
        ctx.live.live.discard(conn)


# ---- outbound ------------------------------------------------------------------------
async def _connect_first(ctx: ProxyContext, pod: PodEndpoint,
                         hops: list[Hop]) -> tuple[Hop, Upstream]:
    """Try hops in order; an endpoint that cannot be reached is skipped for a while.
    A CONNECT refused by the far side (policy, app down) is final: no other hop."""
    last: Exception = OSError("no destination")
    for hop in hops:
        try:
            if hop.transport is Transport.HBONE:
                expected = ctx.state.workload_identity(hop.workload) if hop.workload else None
                upstream: Upstream = await ctx.tunnels.open(
                    pod, hop.address, hop.port, hop.authority, expected)
            else:
                upstream = await dial(pod.netns, hop.address, hop.port, CONNECT_TIMEOUT)
        except (OSError, TimeoutError, TunnelFailed) as e:
            last = e
            if isinstance(e, TunnelFailed):
                ctx.metrics.tunnel_failed(*failure_kind(e))
            ctx.picker.report_failure((hop.address, hop.target_port), time.monotonic())
            log.info("destination unreachable", pod=pod.key, to=hop.authority, error=str(e))
            continue
        ctx.picker.report_success((hop.address, hop.target_port))
        return hop, upstream
    if hops and hops[0].via_waypoint:  # never around it: refused, naming the waypoint
        hop = hops[0]
        raise WaypointUnavailable(hop.waypoint, f"service {hop.service}" if hop.service
                                  else hop.authority, str(last)) from last
    raise last


def _refused(ctx: ProxyContext, record: ConnectionRecord, e: ConnectionRefusedByMesh) -> None:
    """Fail closed: the access log says why, the metrics count it."""
    record.outcome = ("error" if isinstance(e, WaypointUnavailable)
                      else "denied" if isinstance(e, delivery.WaypointBypassed) else "refused")
    record.reason = str(e)
    ctx.metrics.refused(e.cause, record.direction,
                        e.waypoint if isinstance(e, WaypointUnavailable) else "")
    log.info("connection refused", pod=record.destination_workload or record.source_workload,
             cause=e.cause, reason=str(e))


async def handle_outbound(ctx: ProxyContext, pod: PodEndpoint, client: socket.socket) -> None:
    record = ConnectionRecord("outbound", pod.ip, "", source_identity=pod.identity,
                              source_workload=pod.key)
    try:
        dst_ip, dst_port = ctx.original_destination(client)
        record.destination_address = f"{dst_ip}:{dst_port}"
        admission.outbound(ctx.state, ctx.tunnels.certs, pod)
        hops = plan(ctx.state, ctx.picker, dst_ip, dst_port, time.monotonic())
        local = same_node.target(ctx.same_node_fast_path, ctx.local_pods, hops)
        if local is not None:
            await handle_same_node(ctx, pod, client, hops[0], local, record)
            return
        hop, upstream = await _connect_first(ctx, pod, hops)
        ctx.tunnels.service_connected(ctx.state, pod, hop, hops)  # warm ahead (warm.py)
        mtls = hop.transport is Transport.HBONE
        dst_name, dst_ns = _names(hop.workload)
        src_name, src_ns = _names(ctx.workload_of(pod))
        record.transport = hop.transport.value
        record.destination_workload = f"{dst_ns}/{dst_name}" if hop.workload else ""
        record.destination_service = hop.service or ""
        if mtls and hop.workload is not None:
            record.destination_identity = ctx.state.workload_identity(hop.workload)
        labels = ConnectionLabels(
            reporter="source", source_workload=src_name, source_workload_namespace=src_ns,
            source_principal=pod.identity, destination_workload=dst_name,
            destination_workload_namespace=dst_ns,
            destination_service=_service_host(hop.service, ctx.state.trust_domain),
            destination_principal=record.destination_identity or "unknown",
            connection_security_policy="mutual_tls" if mtls else "none",
        )
        await _splice(ctx, client, upstream, labels, record)
    except TunnelRefused as e:
        record.outcome = "denied" if e.status in (401, 403) else "refused"
        record.reason = str(e)
        hbone.reset_socket(client)
    except (NoHealthyEndpoint, MissingCertificate) as e:
        record.outcome, record.reason = "refused", str(e)
        hbone.reset_socket(client)
    except ConnectionRefusedByMesh as e:
        _refused(ctx, record, e)
        hbone.reset_socket(client)
    except TunnelFailed as e:  # its message names the peer and what failed
        record.outcome, record.reason = "error", str(e)
        hbone.reset_socket(client)
    except OriginalDestinationUnknown as e:  # on 15001 without being captured
        record.outcome, record.reason = "error", str(e)
        ctx.metrics.refused("capture_miss", record.direction)
        log.warning("connection refused", pod=pod.key, cause="capture_miss", reason=str(e))
        hbone.reset_socket(client)
    except (OSError, TimeoutError, hbone.HboneStreamReset) as e:
        record.outcome, record.reason = "error", f"{type(e).__name__}: {e}"
        hbone.reset_socket(client)
    finally:
        client.close()
        ctx.access_log.write(record)


# ---- inbound HBONE -------------------------------------------------------------------
def admit_inbound(ctx: ProxyContext, pod: PodEndpoint, record: ConnectionRecord,
                  peer: str, peer_ip: str, host: str, port: int
                  ) -> tuple[int, pb.Workload | None]:
    """The destination side's decisions for a connection from the verified `peer`
    (SPIFFE ID) at `peer_ip` to `host`:`port` of `pod`, in order: the target is this
    pod, not one of the proxy's ports, config and the pod's policy known, the
    waypoint binding respected, L4 authorization. handle_hbone, the same-node path
    and the re-authorization of live connections all call this one function.
    Returns (0, workload) when admitted, else (the HTTP status the CONNECT would be
    refused with, workload) with `record` saying why and the refusal counted."""
    if host not in (pod.ip, pod.ip6):
        record.outcome, record.reason = "refused", f"{host} is not this pod ({pod.ip})"
        return BAD_TARGET, None
    try:
        delivery.check_port(pod, port)
    except delivery.SelfCall as e:
        _refused(ctx, record, e)
        return BAD_TARGET, None
    wl = ctx.workload_of(pod)
    try:
        admission.inbound(ctx.state, pod, wl)
    except ConnectionRefusedByMesh as e:
        _refused(ctx, record, e)
        return UPSTREAM_REFUSED, wl
    try:  # the peer's certificate, not its address, proves it is the waypoint
        delivery.check_waypoint(wl, peer)
    except delivery.WaypointBypassed as e:
        _refused(ctx, record, e)
        return DENIED, wl
    verdict = authz.authorize(ctx.state, wl, peer, peer_ip, port)
    record.policy = verdict.policy or ""
    if not verdict.allowed:
        record.outcome, record.reason = "denied", verdict.reason
        return DENIED, wl
    return 0, wl


async def handle_hbone(ctx: ProxyContext, pod: PodEndpoint,
                       request: InboundTunnelRequest) -> None:
    """One CONNECT arriving at the pod: authorize, then reach the app on loopback."""
    peer = str(request.peer_identity)
    host, port = request.target
    record = ConnectionRecord("inbound", request.peer_address[0], request.authority,
                              source_identity=peer, destination_identity=pod.identity,
                              destination_workload=pod.key, transport="hbone")
    try:
        status, wl = admit_inbound(ctx, pod, record, peer, request.peer_address[0], host,
                                   port)
        if status:
            await request.reject(status)
            return
        try:
            app = await dial(pod.netns, delivery.app_address(pod, ":" in host), port,
                             CONNECT_TIMEOUT)
        except (OSError, TimeoutError, delivery.NoPodAddress) as e:
            record.outcome, record.reason = "refused", f"app port {port}: {e}"
            await request.reject(UPSTREAM_REFUSED)
            return
        stream = await request.accept()
        src = caller(ctx.state.workload_at(request.peer_address[0]), peer)
        src_name, src_ns = src.workload, src.namespace
        dst_name, dst_ns = _names(wl)
        labels = ConnectionLabels(
            reporter="destination", source_workload=src_name, source_workload_namespace=src_ns,
            source_principal=peer, source_app=src.app, destination_workload=dst_name,
            destination_workload_namespace=dst_ns, destination_principal=pod.identity,
            connection_security_policy="mutual_tls")

        def recheck() -> tuple[bool, str, str]:
            scratch = ConnectionRecord("inbound", request.peer_address[0], "")
            status, _ = admit_inbound(ctx, pod, scratch, peer, request.peer_address[0], host,
                                      port)
            return status == 0, scratch.reason, scratch.policy

        await _watched(ctx, "inbound", record, recheck, (app,),
                       _splice(ctx, app, stream, labels, record, downstream_is_client=False))
    except (OSError, hbone.HboneError) as e:
        record.outcome, record.reason = "error", f"{type(e).__name__}: {e}"
    finally:
        ctx.access_log.write(record)


# ---- same node -----------------------------------------------------------------------
async def handle_same_node(ctx: ProxyContext, pod: PodEndpoint, client: socket.socket,
                           hop: Hop, dst: PodEndpoint, record: ConnectionRecord) -> None:
    """An outbound connection to a pod this proxy serves, no waypoint on the path: the
    destination's decisions taken here (admit_inbound, as handle_hbone takes them),
    the app dialled in the destination pod's netns, bytes spliced in the kernel.
    Writes the destination's access-log record; `record` (the source's) is written by
    handle_outbound. Both are labelled mutual_tls: both identities are proven by
    certificates this node issued and holds (ztunnel reports its same-node path so)."""
    src_ip = (pod.ip6 if ":" in hop.address else pod.ip) or pod.ip or pod.ip6
    port = hop.target_port
    record.transport = "hbone"
    record.destination_workload = f"{dst.namespace}/{dst.name}"
    record.destination_service = hop.service or ""
    expected = ctx.state.workload_identity(hop.workload) if hop.workload else ""
    record.destination_identity = expected or dst.identity
    if expected and expected != dst.identity:  # what the tunnel's peer check refuses
        record.outcome, record.reason = "error", (
            f"pod {dst.key} at {hop.address} is {dst.identity}, the config says {expected}")
        hbone.reset_socket(client)
        return
    why = ctx.tunnels.certs.certificate_error(SpiffeId.parse(dst.identity))
    if why is not None:  # the tunnel's TLS handshake would fail: no inbound record
        record.outcome, record.reason = "error", f"pod {dst.key} has no certificate: {why}"
        ctx.metrics.refused("certificate_pending", "inbound")
        hbone.reset_socket(client)
        return
    inbound = ConnectionRecord("inbound", src_ip, hop.authority, source_identity=pod.identity,
                               destination_identity=dst.identity, destination_workload=dst.key,
                               transport="hbone")
    try:
        status, wl = admit_inbound(ctx, dst, inbound, pod.identity, src_ip, hop.address, port)
        if status:
            record.outcome = "denied" if status == DENIED else "refused"
            record.reason = f"refused by {dst.key} ({status}): {inbound.reason}"
            record.policy = inbound.policy
            hbone.reset_socket(client)
            return
        try:
            app = await dial(dst.netns, delivery.app_address(dst, ":" in hop.address), port,
                             CONNECT_TIMEOUT)
        except (OSError, TimeoutError, delivery.NoPodAddress) as e:
            inbound.outcome, inbound.reason = "refused", f"app port {port}: {e}"
            record.outcome, record.reason = "refused", f"refused by {dst.key} " \
                f"({UPSTREAM_REFUSED}): {inbound.reason}"
            hbone.reset_socket(client)
            return
        await _relay_same_node(ctx, pod, client, app, hop, dst, wl, src_ip, record, inbound)
    finally:
        ctx.access_log.write(inbound)


async def _relay_same_node(ctx: ProxyContext, pod: PodEndpoint, client: socket.socket,
                           app: socket.socket, hop: Hop, dst: PodEndpoint,
                           wl: pb.Workload | None, src_ip: str, record: ConnectionRecord,
                           inbound: ConnectionRecord) -> None:
    src_name, src_ns = _names(ctx.workload_of(pod))
    dst_name, dst_ns = _names(hop.workload)
    source_labels = ConnectionLabels(
        reporter="source", source_workload=src_name, source_workload_namespace=src_ns,
        source_principal=pod.identity, destination_workload=dst_name,
        destination_workload_namespace=dst_ns,
        destination_service=_service_host(hop.service, ctx.state.trust_domain),
        destination_principal=dst.identity, connection_security_policy="mutual_tls")
    src = caller(ctx.state.workload_at(src_ip), pod.identity)
    wl_name, wl_ns = _names(wl)
    destination_labels = ConnectionLabels(
        reporter="destination", source_workload=src.workload,
        source_workload_namespace=src.namespace, source_principal=pod.identity,
        source_app=src.app, destination_workload=wl_name, destination_workload_namespace=wl_ns,
        destination_principal=dst.identity, connection_security_policy="mutual_tls")

    def recheck() -> tuple[bool, str, str]:
        scratch = ConnectionRecord("inbound", src_ip, hop.authority)
        status, _ = admit_inbound(ctx, dst, scratch, pod.identity, src_ip, hop.address,
                                  hop.target_port)
        return status == 0, scratch.reason, scratch.policy

    conn = same_node.LiveConnection(recheck, (client, app))
    ctx.live.live.add(conn)
    for labels in (source_labels, destination_labels):
        ctx.metrics.connection_opened(labels)
    transfer = conn.transfer
    try:
        await same_node.relay(ctx.splicer, ctx.metrics, client, app, conn)
    except asyncio.CancelledError:
        if not conn.cut_reason:
            raise
        for r in (record, inbound):
            r.outcome, r.reason, r.policy = "denied", conn.cut_reason, conn.cut_policy
        ctx.metrics.connections_cut.labels("outbound").inc()
        ctx.metrics.connections_cut.labels("inbound").inc()
        with contextlib.suppress(OSError):
            app.close()
    finally:
        ctx.live.live.discard(conn)
        for r in (record, inbound):
            r.request_bytes, r.response_bytes = transfer.request_bytes, transfer.response_bytes
        for labels in (source_labels, destination_labels):
            ctx.metrics.connection_closed(labels, transfer.request_bytes,
                                          transfer.response_bytes)


# ---- inbound plaintext ---------------------------------------------------------------
def admit_plaintext(ctx: ProxyContext, pod: PodEndpoint, record: ConnectionRecord,
                    wl: pb.Workload | None, peer_ip: str, port: int) -> bool:
    """The decisions for a plaintext connection to `pod`:`port` from `peer_ip`: new
    ones and, on each snapshot, live ones. Raises ConnectionRefusedByMesh (not the
    proxy's port, not the proxy itself, config/policy/certificate known, no waypoint
    binding); False with `record` saying why when STRICT or a policy denies."""
    delivery.check_port(pod, port)
    delivery.check_peer(pod, peer_ip)
    admission.inbound_plaintext(ctx.state, ctx.tunnels.certs, pod, wl)
    delivery.check_waypoint(wl, None)  # plaintext never comes from the waypoint
    if wl is not None and ctx.state.mtls_mode(wl) == pb.STRICT:
        policy = ctx.state.policies.get(wl.uid)
        record.outcome, record.reason = "denied", "STRICT mTLS: plaintext refused"
        record.policy = policy.mtls_policy if policy else ""
        return False
    verdict = authz.authorize(ctx.state, wl, None, peer_ip, port)
    record.policy = verdict.policy or ""
    if not verdict.allowed:
        record.outcome, record.reason = "denied", verdict.reason
        return False
    return True


async def handle_inbound_plaintext(ctx: ProxyContext, pod: PodEndpoint,
                                   client: socket.socket) -> None:
    """A plaintext connection to any pod port, steered here by sk_lookup."""
    peer_ip = client.getpeername()[0].split("%")[0]
    local_ip, port = client.getsockname()[:2]
    record = ConnectionRecord("inbound_plaintext", peer_ip, f"{local_ip}:{port}",
                              destination_identity=pod.identity, destination_workload=pod.key,
                              transport="plaintext")
    wl = ctx.workload_of(pod)
    try:
        if not admit_plaintext(ctx, pod, record, wl, peer_ip, port):
            hbone.reset_socket(client)
            return
        app = await dial(pod.netns, delivery.app_address(pod, ":" in local_ip), port,
                         CONNECT_TIMEOUT)
        src_name, src_ns = _names(ctx.state.workload_at(peer_ip))
        dst_name, dst_ns = _names(wl)
        labels = ConnectionLabels(
            reporter="destination", source_workload=src_name, source_workload_namespace=src_ns,
            destination_workload=dst_name, destination_workload_namespace=dst_ns,
            destination_principal=pod.identity, connection_security_policy="none")
        def recheck() -> tuple[bool, str, str]:
            scratch = ConnectionRecord("inbound_plaintext", peer_ip, "")
            try:
                allowed = admit_plaintext(ctx, pod, scratch, ctx.workload_of(pod), peer_ip,
                                          port)
            except ConnectionRefusedByMesh as e:
                return False, str(e), ""
            return allowed, scratch.reason, scratch.policy

        await _watched(ctx, "inbound_plaintext", record, recheck, (client, app),
                       _splice(ctx, client, app, labels, record))
    except ConnectionRefusedByMesh as e:
        _refused(ctx, record, e)
        hbone.reset_socket(client)
    except (OSError, TimeoutError) as e:
        record.outcome, record.reason = "error", f"{type(e).__name__}: {e}"
        hbone.reset_socket(client)
    finally:
        with contextlib.suppress(OSError):
            client.close()
        ctx.access_log.write(record)



# ---- one pod -------------------------------------------------------------------------
def peer_address(sock: socket.socket) -> str:
    """The source address a per-source cap counts ("" when the peer is already gone:
    one shared bucket, so it cannot be used to escape the cap)."""
    try:
        return str(sock.getpeername()[0]).split("%")[0]
    except OSError:
        return ""


def limited(ctx: ProxyContext, direction: str, source: str, sock: socket.socket,
            work: Coroutine[Any, Any, None]) -> Coroutine[Any, Any, None] | None:
    """`work` if `source` is under its cap (released when it ends); else the
    connection is reset at once (fail closed) and None returned."""
    release = ctx.source_limit.admit(direction, source)
    if release is None:
        work.close()  # never started: no "coroutine was never awaited"
        hbone.reset_socket(sock)
        with contextlib.suppress(OSError):
            sock.close()
        return None
    return _released(work, release)


async def _released(work: Coroutine[Any, Any, None], release: Release) -> None:
    try:
        await work
    finally:
        release()


Dispatch = Callable[[str, PodEndpoint, socket.socket], bool]
"""Hands an accepted connection ("outbound" | "inbound_plaintext") to another process
(a worker); False: serve it here."""


async def serve_pod(ctx: ProxyContext, pod: PodEndpoint, listeners: PodListeners,
                    connections: set[asyncio.Task[None]],
                    dispatch: Dispatch | None = None) -> None:
    """Accept on all of a pod's listeners until cancelled; connection tasks go into
    `connections` (they outlive this call, so a drain can wait for them)."""
    def outbound(s: socket.socket) -> Coroutine[Any, Any, None] | None:
        if dispatch is not None and dispatch("outbound", pod, s):
            return None  # the worker enforces its own cap
        return limited(ctx, "outbound", pod.key, s, handle_outbound(ctx, pod, s))

    def inbound(s: socket.socket) -> Coroutine[Any, Any, None] | None:
        if dispatch is not None and dispatch("inbound_plaintext", pod, s):
            return None
        return limited(ctx, "inbound_plaintext", peer_address(s), s,
                       handle_inbound_plaintext(ctx, pod, s))

    def failed(direction: str) -> Callable[[BaseException], None]:
        return lambda _: ctx.metrics.refused("handler_error", direction)

    ctx.local_pods.add(pod)  # same-node connections to it may skip the tunnel
    try:
        async with asyncio.TaskGroup() as tg:
            for sock in listeners.outbound_sockets:
                tg.create_task(accept_loop(sock, outbound, connections, failed("outbound")))
            for sock in listeners.inbound_sockets:
                tg.create_task(accept_loop(sock, inbound, connections,
                                           failed("inbound_plaintext")))
            tg.create_task(ctx.tunnels.serve(
                pod, listeners.hbone_sockets, lambda request: handle_hbone(ctx, pod, request),
                admit=lambda peer: ctx.source_limit.admit("inbound", peer)))
    finally:
        ctx.local_pods.remove(pod)

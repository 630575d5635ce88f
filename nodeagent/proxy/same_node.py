"""Same-node connections without the tunnel: what decides the fast path, the relay
(kernel splice, user space as the fallback), and the registry of live connections
that a new snapshot re-authorizes.

When the outbound plan's first hop is HBONE to a pod this proxy serves, with no
waypoint on the path, the proxy holds both ends already: the source pod's
certificate (admission.outbound proved it was issued) and the destination's. The
HBONE leg would be this process talking TLS to itself. Instead the handler takes the
destination's decisions itself with the one function handle_hbone uses
(handlers.admit_inbound) and dials the app in the destination pod's netns, as
handle_hbone would. `--same-node-fast-path=off` (AMBIENT_SAME_NODE_FAST_PATH=off)
keeps the tunnel, for comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from nodeagent.metrics import ProxyMetrics
from nodeagent.outbound_plan import Hop, Transport
from nodeagent.proxy.pod_listeners import PodEndpoint
from nodeagent.proxy.relay import Transfer, relay_sockets
from nodeagent.proxy.splice import SplicedTransfer, Splicer, SpliceUnavailable

log = structlog.get_logger("nodeagent.proxy.same_node")

ENV = "AMBIENT_SAME_NODE_FAST_PATH"


def enabled_from_environment() -> bool:
    """On unless AMBIENT_SAME_NODE_FAST_PATH is off/0/false/no."""
    return os.environ.get(ENV, "on").strip().lower() not in ("off", "0", "false", "no")


@dataclass
class LocalPods:
    """The pods this proxy serves, by address (both families)."""

    by_ip: dict[str, PodEndpoint] = field(default_factory=dict)

    def add(self, pod: PodEndpoint) -> None:
        for ip in (pod.ip, pod.ip6):
            if ip:
                self.by_ip[ip] = pod

    def remove(self, pod: PodEndpoint) -> None:
        for ip in (pod.ip, pod.ip6):
            if ip and self.by_ip.get(ip) is pod:
                del self.by_ip[ip]

    def remove_key(self, key: str) -> None:
        for ip in [ip for ip, p in self.by_ip.items() if p.key == key]:
            del self.by_ip[ip]

    def at(self, ip: str) -> PodEndpoint | None:
        return self.by_ip.get(ip)


def target(enabled: bool, local: LocalPods, hops: list[Hop]) -> PodEndpoint | None:
    """The local destination pod when the connection may skip the tunnel: the first
    hop is HBONE straight to a pod of this node (never a hop via a waypoint, never
    plaintext or passthrough)."""
    if not enabled or not hops:
        return None
    hop = hops[0]
    if hop.transport is not Transport.HBONE or hop.via_waypoint:
        return None
    return local.at(hop.address)


Recheck = Callable[[], tuple[bool, str, str]]
"""Re-run the destination's decisions against the state now: (allowed, reason, policy)."""


@dataclass(eq=False)
class LiveConnection:
    """A relayed connection a snapshot may cut (same-node, inbound HBONE, inbound
    plaintext: every connection whose destination this proxy decides)."""

    recheck: Recheck
    sockets: tuple[socket.socket, ...]
    transfer: Transfer = field(default_factory=Transfer)  # bytes so far, also when cut
    task: asyncio.Future[Any] | None = None
    cut_reason: str = ""
    cut_policy: str = ""

    def cut(self, reason: str, policy: str) -> None:
        """Reset both sockets (linger 0: close sends RST) and stop the relay."""
        self.cut_reason, self.cut_policy = reason, policy
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        if self.task is not None:
            self.task.cancel()


@dataclass
class LiveConnections:
    """Every live connection this proxy admitted as the destination;
    `reauthorize` runs on each snapshot (ztunnel does the same for inbound)."""

    live: set[LiveConnection] = field(default_factory=set)

    def reauthorize(self) -> int:
        """Cut every connection the state in force now denies; returns how many."""
        cut = 0
        for conn in list(self.live):
            if conn.cut_reason:
                continue
            try:
                allowed, reason, policy = conn.recheck()
            except Exception as e:  # fail closed: a decision that cannot be made denies
                allowed, reason, policy = False, f"re-authorization failed: {e}", ""
            if not allowed:
                log.info("live connection cut by policy", reason=reason, policy=policy)
                conn.cut(reason, policy)
                cut += 1
        return cut


async def relay(splicer: Splicer | None, metrics: ProxyMetrics, client: socket.socket,
                app: socket.socket, conn: LiveConnection) -> Transfer:
    """Splice in the kernel; when that cannot be set up, relay in user space (logged
    once per reason, counted). Runs as `conn.task` so a cut can stop it."""
    async def run() -> Transfer:
        transfer = conn.transfer
        if splicer is not None:
            result = SplicedTransfer()
            try:
                await splicer.relay(client, app, result)
            except SpliceUnavailable as e:
                metrics.splice_fallback(e.reason)
                _log_fallback_once(e.reason, str(e))
            else:
                metrics.same_node("splice")
                return transfer
            finally:
                transfer.request_bytes = result.request_bytes
                transfer.response_bytes = result.response_bytes
                metrics.splice_user_bytes.inc(result.user_bytes)
        else:
            metrics.splice_fallback("disabled")
        metrics.same_node("relay")
        return await relay_sockets(client, app, transfer)

    conn.task = asyncio.ensure_future(run())
    return await conn.task


_fallback_logged: set[str] = set()


def _log_fallback_once(reason: str, detail: str) -> None:
    if reason not in _fallback_logged:
        _fallback_logged.add(reason)
        log.warning("same-node splice unavailable: relaying in user space",
                    reason=reason, detail=detail)

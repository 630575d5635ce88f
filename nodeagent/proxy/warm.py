"""Warm ahead: when a pod first uses a service, open tunnels to its other endpoints.

A first connection to a pod pays a whole mTLS handshake (~5 ms on the bench, against
~1 ms for a pooled tunnel). Round robin sends the pod's next connections to the
service's other endpoints, each one cold in turn. As Linkerd's balancer connects to
every endpoint of a service it uses, the first use of a service by a pod starts, in
the background, HBONE connections from that pod to up to `per_service` other
endpoints it has no connection to, so those later first connections are pooled.

Bounded: once per (pod, service) (the set is bounded too, oldest forgotten first),
at most `per_service` endpoints, each warm bounded by the tunnel connect timeout, and
at most `in_flight` warming handshakes at a time per proxy process, each started only
once no tunnel has been opened for a real connection for QUIET seconds (`busy`, polled
every 2 ms, for at most 1 s; a pod opening connections to several services at start
gets them all before any warming competes with them):
the proxy is one event loop, and 8 handshakes at once (~1 ms of CPU each on both
sides) delayed the pod's next foreground first connection from ~10 to ~27 ms on the
bench.
Fail closed is untouched: a warmed connection is an ordinary pool connection (full
chain verification and SVID checks in the handshake; a peer that is not the
endpoint's expected identity is closed, never pooled, and counted), it sends no
CONNECT, and when unused it closes after the pool's idle timeout.
AMBIENT_WARM_TUNNELS=0 switches it off (read at start; worker processes inherit it)."""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass

import structlog
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from mesh.hbone import HboneClientPool
from mesh.hbone.client import HboneWrongPeer

log = structlog.get_logger(__name__)

ENV = "AMBIENT_WARM_TUNNELS"
PER_SERVICE = 8
IN_FLIGHT = 1  # warming handshakes at a time per process
QUIET = 0.02  # seconds without a real tunnel setup before a warming handshake starts
YIELD_POLL = 0.002  # seconds between checks that no tunnel is being opened
YIELD_MAX = 1.0  # ... after which warming goes ahead anyway
REMEMBERED = 4096  # (pod, service) pairs whose warming is not repeated


def enabled_from_environment(env: Mapping[str, str] = os.environ) -> bool:
    """On unless AMBIENT_WARM_TUNNELS is 0/false/off/no."""
    return env.get(ENV, "1").strip().lower() not in ("0", "false", "off", "no")


@dataclass(frozen=True)
class WarmTarget:
    """One endpoint to warm a tunnel to: its HBONE address and expected identity."""

    address: str
    port: int
    expected_identity: str | None


Opener = Callable[[WarmTarget], Awaitable[bool]]


class Warmer:
    """Schedules background warming; counts what it did (see WarmCollector)."""

    def __init__(self, enabled: bool = True, per_service: int = PER_SERVICE,
                 remembered: int = REMEMBERED, in_flight: int = IN_FLIGHT,
                 busy: Callable[[], bool] = lambda: False) -> None:
        """`busy`: True while tunnels are being opened for real connections (warming
        waits)."""
        self.enabled = enabled
        self.busy = busy
        self.per_service = per_service
        self.in_flight = in_flight
        self._slots: asyncio.Semaphore | None = None  # made in the loop, on first use
        self._remembered = remembered
        self._done: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.failed = 0  # warm attempts that did not produce a connection (not refusals)

    def first_use(self, pod: str, service: str) -> bool:
        """True the first time `pod` uses `service` (and records it)."""
        key = (pod, service)
        if key in self._done:
            self._done.move_to_end(key)
            return False
        self._done[key] = None
        while len(self._done) > self._remembered:
            self._done.popitem(last=False)
        return True

    def service_used(self, pod: str, service: str, targets: list[WarmTarget],
                     open_one: Opener) -> int:
        """`pod` just connected to `service`; warm up to per_service of `targets` (the
        service's other HBONE endpoints) in the background, once per (pod, service).
        Returns how many were scheduled."""
        if not self.enabled or not targets or not self.first_use(pod, service):
            return 0
        chosen = targets[:self.per_service]
        for target in chosen:
            task = asyncio.ensure_future(self._warm_one(pod, service, target, open_one))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        log.debug("tunnel.warming", pod=pod, service=service, endpoints=len(chosen))
        return len(chosen)

    async def _warm_one(self, pod: str, service: str, target: WarmTarget,
                        open_one: Opener) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.in_flight)
        try:
            async with self._slots:
                loop = asyncio.get_running_loop()
                give_up = loop.time() + YIELD_MAX
                while self.busy() and loop.time() < give_up:
                    await asyncio.sleep(YIELD_POLL)
                await open_one(target)
        except asyncio.CancelledError:
            raise
        except HboneWrongPeer as exc:  # counted by the pool; the connection is closed
            log.warning("tunnel.warm_refused", pod=pod, service=service,
                        to=f"{target.address}:{target.port}", reason=str(exc))
        except Exception as exc:  # background: log and count, never raise
            self.failed += 1
            log.info("tunnel.warm_failed", pod=pod, service=service,
                     to=f"{target.address}:{target.port}", error=str(exc))

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class WarmCollector(Collector):
    """ambient_tunnel_warmed_total{outcome}, ambient_tunnel_warmed_used_total and
    ambient_hbone_connections_opened_total, read from the pool at each scrape."""

    def __init__(self, pool: HboneClientPool, warmer: Warmer) -> None:
        self._pool = pool
        self._warmer = warmer

    def collect(self) -> Iterator[CounterMetricFamily]:
        warmed = CounterMetricFamily(
            "ambient_tunnel_warmed", "HBONE connections opened ahead of need, by outcome "
            "(opened; refused: the peer was not the endpoint's identity; failed)",
            labels=["outcome"])
        warmed.add_metric(["opened"], self._pool.warmed)
        warmed.add_metric(["refused"], self._pool.warm_refused)
        warmed.add_metric(["failed"], self._warmer.failed)
        yield warmed
        yield CounterMetricFamily("ambient_tunnel_warmed_used",
                                  "Warmed HBONE connections that later carried a tunnel",
                                  value=self._pool.warmed_used)
        yield CounterMetricFamily("ambient_hbone_connections_opened",
                                  "HBONE (mTLS) connections this proxy opened, warmed "
                                  "ones included", value=self._pool.connections_opened)

"""Connection and pending-request limits per backend service (sans I/O), Envoy's
circuit breakers: beyond max_connections new requests queue as pending; beyond
max_pending_requests they are refused at once with 503 and a header saying which
limit overflowed, rather than piling up latency on a saturated backend."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

OVERFLOW_HEADER = "x-ambient-overloaded"


@dataclass(frozen=True)
class LimitsConfig:
    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests_per_connection: int | None = None


def share_of(config: LimitsConfig, share: float) -> LimitsConfig:
    """What one of several waypoint workers enforces: `share` (1/N) of the connection
    and pending-request limits, rounded down but at least 1 (0 stays 0), so that all
    workers together stay within the policy wherever it is at least N; below that,
    each worker still allows one (there are no fractional connections)."""
    if share >= 1:
        return config

    def part(v: int | None) -> int | None:
        return v if not v else max(1, int(v * share + 1e-9))
    return replace(config, max_connections=part(config.max_connections),
                   max_pending_requests=part(config.max_pending_requests))


class Admission(Enum):
    CONNECT = "connect"  # open (or use) a connection now
    QUEUE = "queue"  # wait for a connection to free up
    REFUSE = "refuse"  # 503: pending queue full


class ConnectionLimits:
    """Counts connections and pending requests of one backend service."""

    def __init__(self, config: LimitsConfig) -> None:
        self.config = config
        self.connections = 0
        self.pending = 0

    def may_open_connection(self) -> bool:
        m = self.config.max_connections
        return m is None or self.connections < m

    def connection_opened(self) -> None:
        self.connections += 1

    def connection_closed(self) -> None:
        self.connections = max(0, self.connections - 1)

    def admit(self, idle_connection: bool) -> Admission:
        """Decide for a request that needs a connection now."""
        if idle_connection or self.may_open_connection():
            return Admission.CONNECT
        m = self.config.max_pending_requests
        if m is not None and self.pending >= m:
            return Admission.REFUSE
        return Admission.QUEUE

    def enqueue(self) -> None:
        self.pending += 1

    def dequeue(self) -> None:
        self.pending = max(0, self.pending - 1)

    def connection_exhausted(self, requests_served: int) -> bool:
        """A connection that has served its quota is closed instead of reused."""
        m = self.config.max_requests_per_connection
        return m is not None and requests_served >= m

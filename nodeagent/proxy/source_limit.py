"""Per-source connection caps of the node proxy (Envoy/ztunnel-like).

Every proxied connection holds two descriptors in the proxy process (client side and
app side). Without a cap one pod holding ~10,000 allowed connections spent the node
agent's RLIMIT_NOFILE and cut every pod on the node off. Each proxy process (the agent
and each worker: each has its own descriptor limit) therefore admits at most `cap`
concurrent connections per source and path: per source pod on 15001, per peer address
on 15006 and on 15008 (TLS handshakes in progress + established tunnels). A refusal is
reset at once, counted (ambient_connections_refused_total{cause="source_limit"}) and
logged once per flood, not once per connection.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import structlog

from nodeagent.metrics import ProxyMetrics

log = structlog.get_logger("nodeagent.proxy")

ENV = "AMBIENT_MAX_CONNECTIONS_PER_SOURCE"
DEFAULT_PER_SOURCE = 4096  # the load tests run 2,000 concurrent connections from one pod
CAUSE = "source_limit"

Release = Callable[[], None]


class SourceLimitConfigError(ValueError):
    """The configured cap is not a positive integer."""


def cap_from_environment(env: Mapping[str, str] = os.environ) -> int:
    """The agent passes its --max-connections-per-source to its workers this way."""
    raw = env.get(ENV, "")
    if not raw:
        return DEFAULT_PER_SOURCE
    try:
        cap = int(raw)
    except ValueError:
        cap = 0
    if cap < 1:
        raise SourceLimitConfigError(f"{ENV}={raw!r}: expected a positive integer")
    return cap


class SourceLimit:
    """Counts concurrent connections per (path, source) in one proxy process."""

    def __init__(self, cap: int, metrics: ProxyMetrics) -> None:
        if cap < 1:
            raise SourceLimitConfigError(f"per-source cap {cap}: expected >= 1")
        self.cap = cap
        self.metrics = metrics
        self.held: dict[tuple[str, str], int] = {}
        self.flooding: set[tuple[str, str]] = set()  # refused since last under the cap

    def admit(self, direction: str, source: str) -> Release | None:
        """A release to call exactly once when the connection ends, or None: refused
        (counted, logged once per flood); the caller resets the connection."""
        key = (direction, source)
        if self.held.get(key, 0) >= self.cap:
            self.metrics.refused(CAUSE, direction)
            if key not in self.flooding:
                self.flooding.add(key)
                log.warning("connection refused", cause=CAUSE, direction=direction,
                            source=source, limit=self.cap,
                            reason="too many concurrent connections from one source")
            return None
        self.held[key] = self.held.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self.held[key] - 1
            if left:
                self.held[key] = left
            else:
                del self.held[key]
            self.flooding.discard(key)
        return release

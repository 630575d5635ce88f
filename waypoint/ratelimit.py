"""Local rate limiting (sans I/O): a token bucket per route, optionally one per
(route, source identity) so one noisy client cannot starve the others."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimitConfig:
    requests_per_second: float
    burst: int  # bucket size; the first `burst` requests of an idle period pass at once
    per_source: bool = False


class TokenBucket:
    """Refills continuously at `rate` tokens per second up to `capacity`; the caller
    passes the clock in seconds."""

    def __init__(self, rate: float, capacity: int, now: float) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError(f"rate must be > 0 and capacity >= 1 (got {rate}, {capacity})")
        self.rate = rate
        self.capacity = float(capacity)
        self.tokens = float(capacity)
        self._last = now

    def try_take(self, now: float) -> bool:
        if now > self._last:
            self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
            self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def seconds_until_token(self) -> float:
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate


class RateLimiter:
    """Buckets keyed by route (and source); the least recently used per-source buckets
    are dropped beyond `max_keys`, bounding memory whatever identities call.

    `share`: the part of each configured rate and burst this process enforces. With N
    waypoint workers each holds 1/N (a burst of at least one), so all of them together
    never admit more than the policy says; a caller whose connections all land on one
    worker gets 1/N of it (the strict side), as there is no bucket shared between
    processes."""

    def __init__(self, max_keys: int = 10_000, share: float = 1.0) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1] (got {share})")
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()
        self._max_keys = max_keys
        self.share = share

    def allow(self, route: str, cfg: RateLimitConfig, source: str | None, now: float
              ) -> tuple[bool, float]:
        """(allowed, seconds until the next token when refused)."""
        key = (route, (source or "") if cfg.per_source else "")
        bucket = self._buckets.get(key)
        rate = cfg.requests_per_second * self.share
        if bucket is None or bucket.rate != rate:
            bucket = TokenBucket(rate, max(1, math.ceil(cfg.burst * self.share - 1e-9)), now)
            self._buckets[key] = bucket
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        ok = bucket.try_take(now)
        return ok, (0.0 if ok else bucket.seconds_until_token())

    def __len__(self) -> int:
        return len(self._buckets)

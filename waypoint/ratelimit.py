"""Local rate limiting (sans I/O): a token bucket per route, optionally one per
(route, source identity) so one noisy client cannot starve the others."""

from __future__ import annotations

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
    are dropped beyond `max_keys`, bounding memory whatever identities call."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()
        self._max_keys = max_keys

    def allow(self, route: str, cfg: RateLimitConfig, source: str | None, now: float
              ) -> tuple[bool, float]:
        """(allowed, seconds until the next token when refused)."""
        key = (route, (source or "") if cfg.per_source else "")
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != cfg.requests_per_second:
            bucket = TokenBucket(cfg.requests_per_second, cfg.burst, now)
            self._buckets[key] = bucket
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        ok = bucket.try_take(now)
        return ok, (0.0 if ok else bucket.seconds_until_token())

    def __len__(self) -> int:
        return len(self._buckets)

"""Retry decisions (sans I/O): which outcomes are retried, how long to back off, and
the retry budget that keeps retries from multiplying load on a failing backend.

Budget semantics (as Envoy's retry_budget): a retry may start while the retries in
flight stay below `percent` of the requests in flight (rounded down); on top of that a floor of
`min_retries_per_second` tokens lets a quiet service still retry. Without a budget a
backend failing every request would receive (1 + attempts) times the load."""

from __future__ import annotations

import random
from dataclasses import dataclass

from waypoint.messages import IDEMPOTENT_METHODS

# Gateway API leaves the retried codes to the user; with none listed we retry what
# signals an unavailable backend, as Envoy's "gateway-error" + "connect-failure".
DEFAULT_RETRY_CODES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 1  # retries after the first try
    codes: frozenset[int] = DEFAULT_RETRY_CODES
    backoff_base_ms: int = 25
    backoff_max_ms: int = 250
    per_try_timeout_ms: int = 0
    retry_non_idempotent: bool = False

    def may_retry_method(self, method: str, is_grpc: bool = False) -> bool:
        """POST is retried only when allowed: the first try may have had effects.
        gRPC is POST on the wire; its retry safety is the user's call, as for POST."""
        return self.retry_non_idempotent or method in IDEMPOTENT_METHODS

    def should_retry(self, method: str, tries_done: int, status: int | None,
                     is_grpc: bool = False) -> bool:
        """status None means no response: connect failure, reset or per-try timeout."""
        if tries_done > self.attempts:
            return False
        if not self.may_retry_method(method, is_grpc):
            return False
        return status is None or status in self.codes

    def backoff_ms(self, retry_number: int, rng: random.Random) -> float:
        """Exponential backoff with full jitter: uniform in [0, min(max, base * 2^n)),
        so synchronised clients spread out instead of retrying in lock step."""
        ceiling = min(self.backoff_max_ms, self.backoff_base_ms * (2 ** max(0, retry_number - 1)))
        return rng.uniform(0, ceiling)


class RetryBudget:
    """Counts requests and retries in flight; the caller passes the clock (seconds)."""

    def __init__(self, percent: float = 20.0, min_retries_per_second: int = 10) -> None:
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be 0-100 (got {percent})")
        self.ratio = percent / 100.0
        self.min_per_second = min_retries_per_second
        self.active_requests = 0
        self.active_retries = 0
        self._tokens = float(min_retries_per_second)
        self._last: float | None = None

    def request_started(self) -> None:
        self.active_requests += 1

    def request_finished(self) -> None:
        self.active_requests = max(0, self.active_requests - 1)

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(float(self.min_per_second),
                               self._tokens + (now - self._last) * self.min_per_second)
        self._last = now if self._last is None else max(self._last, now)

    def try_start_retry(self, now: float) -> bool:
        """True: the retry may go and the caller must call `retry_finished` after it."""
        self._refill(now)
        if self.active_retries < int(self.ratio * self.active_requests):
            self.active_retries += 1
            return True
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.active_retries += 1
            return True
        return False

    def retry_finished(self) -> None:
        self.active_retries = max(0, self.active_retries - 1)

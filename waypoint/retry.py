"""Retry decisions (sans I/O): which outcomes are retried, how long to back off, and
the retry budget that keeps retries from multiplying load on a failing backend.

Budget semantics (as Linkerd's and Finagle's): over a sliding window, retries may
add `percent` of the requests, plus a small reserve per second so that a service
with little traffic can still retry. Without a budget a backend failing every
request would receive (1 + attempts) times the load; with one, 1 + percent/100."""

from __future__ import annotations

import random
from dataclasses import dataclass

from mesh.backoff import Backoff
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
        """Before retry `retry_number` (1 = the first retry): the mesh's one backoff
        schedule (mesh/backoff.py) with full jitter, uniform in [0, min(max, base *
        2^(n-1))], so synchronised clients spread out instead of retrying in lock step."""
        schedule = Backoff(initial=self.backoff_base_ms, maximum=self.backoff_max_ms,
                           jitter=1.0, rng=rng)
        return schedule.delay(retry_number - 1)


class RetryBudget:
    """Finagle/Linkerd retry budget over a sliding window of `ttl_s` seconds: retries
    may reach `percent` of the requests that started in the window, plus a reserve of
    `min_retries_per_second` x ttl so that a quiet service can still retry. Counts
    live in one-second buckets; the caller passes the clock (seconds)."""

    def __init__(self, percent: float = 20.0, min_retries_per_second: int = 10,
                 ttl_s: int = 10) -> None:
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be 0-100 (got {percent})")
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be >= 1 (got {ttl_s})")
        self.ratio = percent / 100.0
        self.min_per_second = min_retries_per_second
        self.ttl = ttl_s
        self._requests = [0] * ttl_s
        self._retries = [0] * ttl_s
        self._second: int | None = None

    def _advance(self, now: float) -> int:
        sec = int(now)
        if self._second is None:
            self._second = sec
        elif sec > self._second:
            for s in range(self._second + 1, min(sec, self._second + self.ttl) + 1):
                self._requests[s % self.ttl] = 0
                self._retries[s % self.ttl] = 0
            self._second = sec
        return self._second % self.ttl

    def request_started(self, now: float) -> None:
        self._requests[self._advance(now)] += 1

    def balance(self, now: float) -> float:
        """Retries still allowed in the current window."""
        self._advance(now)
        return (self.min_per_second * self.ttl + self.ratio * sum(self._requests)
                - sum(self._retries))

    def try_start_retry(self, now: float) -> bool:
        if self.balance(now) < 1.0:
            return False
        self._retries[self._advance(now)] += 1
        return True

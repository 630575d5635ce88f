"""Exponential backoff with jitter (sans-I/O): the one schedule every retry loop uses.

Why one: the controller reconnect, the Kubernetes list/watch, certificate renewal and
the waypoint's HTTP retries each had their own formula, and "jitter 0.5" meant three
different things (a fraction taken off, a fraction added, a full random draw). Here it
means one thing, so a reader can compare the loops and a change reaches them all.

The schedule, for attempt n = 0, 1, 2, ... (n failures so far):

    base(n)  = min(maximum, initial * multiplier ** n)
    delay(n) = uniform in [base(n) * (1 - jitter), base(n)]

- jitter = 0: exactly base(n), no randomness (deterministic, e.g. for a crash loop);
- jitter = 1: "full jitter" (uniform in [0, base(n)]), what spreads many clients the
  most (the waypoint's per-request retries);
- in between: a delay never shorter than (1 - jitter) of the base.

Jitter only ever shortens a delay, so `maximum` is a true cap: no caller waits longer
than it asked for. Many proxies losing the controller at once do not all come back in
the same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """The schedule above plus the attempt counter of one retry loop.

    `next_delay()` / `reset()` for a loop that owns its state (reconnects);
    `delay(n)` for a caller that counts attempts itself (per-request retries)."""

    initial: float = 0.1
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff jitter must be within [0, 1] (got {self.jitter})")
        if self.initial <= 0 or self.maximum < self.initial or self.multiplier < 1:
            raise ValueError("backoff needs 0 < initial <= maximum and multiplier >= 1 "
                             f"(got initial={self.initial}, maximum={self.maximum}, "
                             f"multiplier={self.multiplier})")

    def base(self, attempt: int) -> float:
        """The un-jittered delay of `attempt` (0-based), capped at `maximum`."""
        # The exponent is bounded so that a loop failing for days cannot overflow.
        return min(self.maximum, self.initial * self.multiplier ** min(max(attempt, 0), 64))

    def delay(self, attempt: int) -> float:
        """The jittered delay of `attempt` (0-based); does not touch the counter."""
        return self.base(attempt) * (1 - self.jitter * self.rng.random())

    def next_delay(self) -> float:
        """The delay before the next try of this loop; counts the attempt."""
        delay = self.delay(self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """After a success: the next failure starts again from `initial`."""
        self.attempt = 0

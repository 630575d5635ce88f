"""Exponential backoff with jitter (sans-I/O): many proxies losing the controller at
once must not all come back in the same instant."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float = 0.1
    maximum: float = 10.0
    multiplier: float = 2.0
    # Fraction of each delay that is randomized: delay in [base * (1 - jitter), base].
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1] (got {self.jitter})")
        if self.initial <= 0 or self.maximum < self.initial or self.multiplier < 1:
            raise ValueError("need 0 < initial <= maximum and multiplier >= 1")

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** min(self.attempt, 64))
        self.attempt += 1
        return base * (1 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempt = 0

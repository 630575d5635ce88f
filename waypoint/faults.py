"""Fault injection decisions (sans I/O): delay and/or abort a percentage of
requests, to test how callers cope. The RNG is injectable so tests are exact."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class FaultConfig:
    delay_ms: int = 0
    delay_percent: float = 0.0
    abort_status: int = 0
    abort_percent: float = 0.0


@dataclass(frozen=True)
class FaultDecision:
    delay_ms: int = 0
    abort_status: int = 0  # 0: do not abort


NO_FAULT = FaultDecision()


def decide_fault(cfg: FaultConfig, rng: random.Random) -> FaultDecision:
    """Delay and abort are drawn independently (as in Istio): a request may be
    delayed and then aborted."""
    delay = cfg.delay_ms if cfg.delay_ms and _hit(cfg.delay_percent, rng) else 0
    abort = cfg.abort_status if cfg.abort_status and _hit(cfg.abort_percent, rng) else 0
    if not delay and not abort:
        return NO_FAULT
    return FaultDecision(delay, abort)


def _hit(percent: float, rng: random.Random) -> bool:
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    return rng.random() * 100 < percent

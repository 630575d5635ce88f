"""Connection / pending limits and fault injection decisions."""

from __future__ import annotations

import random

from waypoint.faults import NO_FAULT, FaultConfig, decide_fault
from waypoint.limits import Admission, ConnectionLimits, LimitsConfig


def test_unlimited_always_connects() -> None:
    lim = ConnectionLimits(LimitsConfig())
    for _ in range(1000):
        lim.connection_opened()
    assert lim.admit(idle_connection=False) is Admission.CONNECT


def test_connections_then_pending_then_refuse() -> None:
    lim = ConnectionLimits(LimitsConfig(max_connections=2, max_pending_requests=1))
    assert lim.admit(False) is Admission.CONNECT
    lim.connection_opened()
    lim.connection_opened()
    assert lim.admit(False) is Admission.QUEUE
    assert lim.admit(idle_connection=True) is Admission.CONNECT
    lim.enqueue()
    assert lim.admit(False) is Admission.REFUSE
    lim.dequeue()
    assert lim.admit(False) is Admission.QUEUE
    lim.connection_closed()
    assert lim.admit(False) is Admission.CONNECT


def test_requests_per_connection_quota() -> None:
    lim = ConnectionLimits(LimitsConfig(max_requests_per_connection=3))
    assert not lim.connection_exhausted(2)
    assert lim.connection_exhausted(3)
    assert not ConnectionLimits(LimitsConfig()).connection_exhausted(10**6)


def test_fault_percentages() -> None:
    rng = random.Random(11)
    cfg = FaultConfig(delay_ms=100, delay_percent=30, abort_status=503, abort_percent=10)
    decisions = [decide_fault(cfg, rng) for _ in range(10_000)]
    delayed = sum(d.delay_ms == 100 for d in decisions)
    aborted = sum(d.abort_status == 503 for d in decisions)
    assert 2800 < delayed < 3200
    assert 850 < aborted < 1150


def test_fault_full_and_none() -> None:
    rng = random.Random(0)
    assert decide_fault(FaultConfig(abort_status=418, abort_percent=100), rng).abort_status == 418
    assert decide_fault(FaultConfig(delay_ms=5, delay_percent=0), rng) is NO_FAULT
    assert decide_fault(FaultConfig(), rng) is NO_FAULT

"""Connection / pending limits and fault injection decisions."""

from __future__ import annotations

import random

import pytest

from waypoint.faults import NO_FAULT, FaultConfig, decide_fault
from waypoint.limits import Admission, ConnectionLimits, LimitsConfig, share_of


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


@pytest.mark.parametrize(("limits", "workers", "expected"), [
    (LimitsConfig(10, 4, 7), 2, LimitsConfig(5, 2, 7)),
    (LimitsConfig(3, 0, None), 2, LimitsConfig(1, 0, None)),
    (LimitsConfig(1, 1), 4, LimitsConfig(1, 1)),  # never below one connection
    (LimitsConfig(None, 9), 3, LimitsConfig(None, 3)),
    (LimitsConfig(10, 4), 1, LimitsConfig(10, 4)),
])
def test_one_of_n_workers_enforces_its_share_of_the_limits(
        limits: LimitsConfig, workers: int, expected: LimitsConfig) -> None:
    assert share_of(limits, 1 / workers) == expected


def test_waypoint_state_of_a_worker_shares_rate_and_connection_limits() -> None:
    from waypoint.config import TrafficSettings, WaypointConfig
    from waypoint.state import WaypointState

    cfg = WaypointConfig(name="w", namespace="default")
    cfg.traffic["default/web"] = TrafficSettings(limits=LimitsConfig(max_connections=8))
    state = WaypointState(cfg)
    whole = state.limits("default/web")
    assert whole is not None and whole.config.max_connections == 8
    state.set_workers(2)
    half = state.limits("default/web")
    assert half is not None and half.config.max_connections == 4
    assert state.rate_limiter.share == 0.5

"""Outlier detection: ejection, return, multiplier, max percent, panic mode."""

from __future__ import annotations

from waypoint.outlier import OutlierConfig, OutlierDetector


def det(**kw: float) -> OutlierDetector:
    cfg = dict(consecutive_5xx=3, interval_s=1.0, base_ejection_s=10.0, max_ejection_percent=50)
    cfg.update(kw)
    return OutlierDetector(OutlierConfig(**cfg))  # type: ignore[arg-type]


def test_ejected_after_consecutive_5xx_and_back_after_ejection_time() -> None:
    d = det()
    assert d.record("a", 500, 0.0, 2) is None
    assert d.record("a", 503, 0.1, 2) is None
    ej = d.record("a", 502, 0.2, 2)
    assert ej is not None and ej.until == 10.2 and ej.times == 1
    assert d.is_ejected("a", 5.0)
    assert d.is_ejected("a", 10.1)
    # Returns at the first sweep at or after 10.2 (sweeps at 1, 2, ... 11).
    assert d.is_ejected("a", 10.9)
    assert not d.is_ejected("a", 11.0)


def test_success_resets_the_count() -> None:
    d = det()
    d.record("a", 500, 0.0, 2)
    d.record("a", 500, 0.0, 2)
    d.record("a", 200, 0.0, 2)
    d.record("a", 500, 0.0, 2)
    d.record("a", 500, 0.0, 2)
    assert not d.is_ejected("a", 0.0)


def test_connect_failures_count_as_errors() -> None:
    d = det()
    for _ in range(3):
        d.record("a", None, 0.0, 2)
    assert d.is_ejected("a", 0.5)


def test_4xx_is_not_an_error() -> None:
    d = det()
    for _ in range(10):
        d.record("a", 404, 0.0, 2)
    assert not d.is_ejected("a", 0.0)


def test_gateway_errors_threshold_alone() -> None:
    d = det(consecutive_5xx=100, consecutive_gateway_errors=2)
    d.record("a", 500, 0.0, 2)
    d.record("a", 503, 0.0, 2)
    assert not d.is_ejected("a", 0.0)  # 500 broke the gateway-error run
    d.record("a", 504, 0.0, 2)
    assert d.is_ejected("a", 0.0)


def test_repeated_ejection_lasts_longer() -> None:
    d = det(interval_s=0.5)
    for _ in range(3):
        d.record("a", 500, 0.0, 2)
    assert not d.is_ejected("a", 10.0)
    for _ in range(3):
        ej = d.record("a", 500, 10.0, 2)
    assert ej is not None and ej.times == 2 and ej.until == 30.0


def test_multiplier_decays_while_healthy() -> None:
    d = det(interval_s=1.0)
    for _ in range(3):
        d.record("a", 500, 0.0, 2)
    assert not d.is_ejected("a", 10.0)
    assert not d.is_ejected("a", 100.0)  # 90 healthy sweeps
    for _ in range(3):
        ej = d.record("a", 500, 100.0, 2)
    assert ej is not None and ej.times == 1


def test_max_ejection_percent_but_at_least_one() -> None:
    d = det(max_ejection_percent=10)
    for ep in ("a", "b"):
        for _ in range(3):
            d.record(ep, 500, 0.0, 4)
    assert d.ejected() == ["a"]  # 1 of 4 is 25 % >= 10 %: b stays


def test_available_falls_back_to_all_when_all_are_ejected() -> None:
    d = det(max_ejection_percent=100)
    eps = ["a", "b"]
    for ep in eps:
        for _ in range(3):
            d.record(ep, 500, 0.0, 2)
    assert d.ejected() == ["a", "b"]
    assert d.available(eps, eps, 1.0) == eps
    d2 = det()
    for _ in range(3):
        d2.record("a", 500, 0.0, 2)
    assert d2.available(eps, eps, 1.0) == ["b"]


def test_long_idle_sweep_is_one_pass() -> None:
    d = det(interval_s=0.001)
    for _ in range(3):
        d.record("a", 500, 0.0, 1)
    assert d.sweep(1e6) == ["a"]

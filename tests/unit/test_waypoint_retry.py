"""Retry policy, backoff and the retry budget."""

from __future__ import annotations

import random

from waypoint.retry import RetryBudget, RetryPolicy


def test_retries_listed_codes_and_connect_failures_only() -> None:
    p = RetryPolicy(attempts=2, codes=frozenset({503}))
    assert p.should_retry("GET", 1, 503)
    assert p.should_retry("GET", 1, None)
    assert not p.should_retry("GET", 1, 500)
    assert not p.should_retry("GET", 1, 200)


def test_attempts_count_retries_after_the_first_try() -> None:
    p = RetryPolicy(attempts=2)
    assert p.should_retry("GET", 1, 503)
    assert p.should_retry("GET", 2, 503)
    assert not p.should_retry("GET", 3, 503)
    assert not RetryPolicy(attempts=0).should_retry("GET", 1, 503)


def test_post_is_not_retried_unless_allowed() -> None:
    assert not RetryPolicy().should_retry("POST", 1, 503)
    assert not RetryPolicy().should_retry("PATCH", 1, None)
    assert RetryPolicy(retry_non_idempotent=True).should_retry("POST", 1, 503)
    for m in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS"):
        assert RetryPolicy().should_retry(m, 1, 503)


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    p = RetryPolicy(backoff_base_ms=10, backoff_max_ms=50)
    rng = random.Random(3)
    for n, ceiling in ((1, 10), (2, 20), (3, 40), (4, 50), (9, 50)):
        samples = [p.backoff_ms(n, rng) for _ in range(300)]
        assert all(0 <= s < ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # jitter spans the range
        assert min(samples) < ceiling * 0.2


def test_budget_ratio_of_active_requests() -> None:
    b = RetryBudget(percent=50, min_retries_per_second=0)
    for _ in range(4):
        b.request_started()
    assert b.try_start_retry(0.0)
    assert b.try_start_retry(0.0)
    assert not b.try_start_retry(0.0)  # 2 of 4 active already retrying
    b.retry_finished()
    assert b.try_start_retry(0.0)


def test_budget_floor_refills_per_second() -> None:
    b = RetryBudget(percent=0, min_retries_per_second=3)
    b.request_started()
    assert [b.try_start_retry(10.0) for _ in range(4)] == [True, True, True, False]
    assert not b.try_start_retry(10.2)  # 0.6 token
    assert b.try_start_retry(10.34)  # > 1 token after ~0.34 s
    assert not b.try_start_retry(10.34)
    # Refill never exceeds the floor.
    assert [b.try_start_retry(100.0) for _ in range(4)] == [True, True, True, False]


def test_budget_caps_retries_when_everything_fails() -> None:
    """1000 sequential failing requests in 1 s: without a budget 1000 retries; with
    20 % / 10 per second only the floor's 10 (+ refill) get through."""
    b = RetryBudget(percent=20, min_retries_per_second=10)
    retries = 0
    for i in range(1000):
        now = i / 1000
        b.request_started()
        if b.try_start_retry(now):
            retries += 1
            b.retry_finished()
        b.request_finished()
    assert 10 <= retries <= 21


def test_budget_counters_never_go_negative() -> None:
    b = RetryBudget()
    b.request_finished()
    b.retry_finished()
    assert (b.active_requests, b.active_retries) == (0, 0)

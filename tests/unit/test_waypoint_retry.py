"""Retry policy, backoff and the retry budget."""

from __future__ import annotations

import random

import pytest

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


def test_budget_allows_percent_of_requests_plus_reserve() -> None:
    b = RetryBudget(percent=50, min_retries_per_second=0, ttl_s=10)
    for _ in range(4):
        b.request_started(0.0)
    assert [b.try_start_retry(0.5) for _ in range(3)] == [True, True, False]
    b.request_started(1.0)
    b.request_started(1.0)
    assert b.try_start_retry(1.0)
    assert not b.try_start_retry(1.0)


def test_budget_reserve_lets_a_quiet_service_retry() -> None:
    b = RetryBudget(percent=0, min_retries_per_second=3, ttl_s=2)
    assert [b.try_start_retry(10.0) for _ in range(7)] == [True] * 6 + [False]
    assert not b.try_start_retry(11.5)  # the window still holds the 6 retries
    assert b.try_start_retry(12.0)  # the bucket of second 10 left the window


def test_budget_window_forgets_old_requests() -> None:
    b = RetryBudget(percent=100, min_retries_per_second=0, ttl_s=3)
    for _ in range(5):
        b.request_started(0.0)
    assert b.balance(2.9) == 5
    assert b.balance(3.0) == 0
    assert b.balance(1000.0) == 0  # a long idle gap clears everything in one step


def test_budget_caps_retries_when_everything_fails() -> None:
    """1000 failing requests in 1 s, 3 retries wanted each: without a budget 3000
    retries; with 20 % + 10/s over 10 s, 200 + 100."""
    b = RetryBudget(percent=20, min_retries_per_second=10)
    retries = 0
    for i in range(1000):
        now = i / 1000
        b.request_started(now)
        for _ in range(3):
            if b.try_start_retry(now):
                retries += 1
    assert retries == 300


def test_budget_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        RetryBudget(percent=101)
    with pytest.raises(ValueError):
        RetryBudget(ttl_s=0)

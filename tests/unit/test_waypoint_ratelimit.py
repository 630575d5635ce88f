"""Token buckets per route and per source."""

from __future__ import annotations

import pytest

from waypoint.ratelimit import RateLimitConfig, RateLimiter, TokenBucket


def test_bucket_allows_burst_then_rate() -> None:
    b = TokenBucket(rate=10, capacity=5, now=0.0)
    assert [b.try_take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not b.try_take(0.05)
    assert b.try_take(0.1)
    assert not b.try_take(0.1)


def test_bucket_never_exceeds_capacity() -> None:
    b = TokenBucket(rate=100, capacity=3, now=0.0)
    assert sum(b.try_take(1000.0) for _ in range(10)) == 3


def test_sustained_rate_is_enforced() -> None:
    b = TokenBucket(rate=50, capacity=50, now=0.0)
    passed = sum(b.try_take(i / 200) for i in range(2000))  # 200 rps for 10 s
    assert 545 <= passed <= 551  # 50 burst + 50/s x 10 s


def test_seconds_until_token() -> None:
    b = TokenBucket(rate=4, capacity=1, now=0.0)
    assert b.try_take(0.0)
    assert b.seconds_until_token() == pytest.approx(0.25)


def test_invalid_bucket() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0.0)


def test_route_limit_is_shared_by_sources() -> None:
    rl = RateLimiter()
    cfg = RateLimitConfig(1, 1)
    assert rl.allow("r", cfg, "alice", 0.0)[0]
    allowed, wait = rl.allow("r", cfg, "bob", 0.0)
    assert not allowed and wait == pytest.approx(1.0)


def test_per_source_limits_are_separate() -> None:
    rl = RateLimiter()
    cfg = RateLimitConfig(1, 1, per_source=True)
    assert rl.allow("r", cfg, "alice", 0.0)[0]
    assert rl.allow("r", cfg, "bob", 0.0)[0]
    assert not rl.allow("r", cfg, "alice", 0.0)[0]
    assert rl.allow("other-route", cfg, "alice", 0.0)[0]


def test_per_source_buckets_are_bounded() -> None:
    rl = RateLimiter(max_keys=100)
    cfg = RateLimitConfig(1, 1, per_source=True)
    for i in range(1000):
        rl.allow("r", cfg, f"id{i}", 0.0)
    assert len(rl) == 100


def test_changed_rate_replaces_the_bucket() -> None:
    rl = RateLimiter()
    assert rl.allow("r", RateLimitConfig(1, 1), None, 0.0)[0]
    assert not rl.allow("r", RateLimitConfig(1, 1), None, 0.0)[0]
    assert rl.allow("r", RateLimitConfig(5, 1), None, 0.0)[0]


def test_a_share_of_the_rate_and_burst_for_one_of_n_workers() -> None:
    """Two workers with share 1/2: each admits half the burst (rounded up, at least
    one) and refills at half the rate, so both together never exceed the policy."""
    cfg = RateLimitConfig(requests_per_second=10.0, burst=5)
    half = RateLimiter(share=0.5)
    admitted = sum(half.allow("r", cfg, None, 0.0)[0] for _ in range(10))
    assert admitted == 3  # ceil(5 / 2)
    assert half.allow("r", cfg, None, 0.2)[0] is True  # 0.2 s x 5/s = one token
    assert half.allow("r", cfg, None, 0.2)[0] is False
    whole = RateLimiter()
    assert sum(whole.allow("r", cfg, None, 0.0)[0] for _ in range(10)) == 5
    tiny = RateLimiter(share=1 / 16)
    assert sum(tiny.allow("r", RateLimitConfig(1.0, 3), None, 0.0)[0] for _ in range(5)) == 1
    with pytest.raises(ValueError):
        RateLimiter(share=0)

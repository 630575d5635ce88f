"""The one backoff schedule (mesh/backoff.py): growth, cap, the meaning of jitter, and
that every retry loop of the mesh uses it rather than a formula of its own."""

from __future__ import annotations

import ast
import datetime as dt
import random
from pathlib import Path

import pytest

from mesh.backoff import Backoff
from nodeagent.certs import renewal_delay
from waypoint.retry import RetryPolicy

ROOT = Path(__file__).resolve().parents[2]


def test_without_jitter_the_delay_doubles_up_to_the_cap() -> None:
    b = Backoff(initial=0.5, maximum=30.0, jitter=0.0)
    assert [b.next_delay() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert b.attempt == 9
    b.reset()
    assert b.next_delay() == 0.5


@pytest.mark.parametrize("jitter", [0.2, 0.5, 1.0])
def test_jitter_only_shortens_and_spans_its_fraction(jitter: float) -> None:
    b = Backoff(initial=1.0, maximum=8.0, jitter=jitter, rng=random.Random(11))
    for attempt, base in ((0, 1.0), (2, 4.0), (3, 8.0), (10, 8.0)):
        samples = [b.delay(attempt) for _ in range(400)]
        assert all(base * (1 - jitter) <= s <= base for s in samples)
        # the draw covers the range, so clients really spread out
        assert min(samples) < base * (1 - jitter * 0.9)
        assert max(samples) > base * (1 - jitter * 0.1)
    assert b.attempt == 0, "delay(n) must not move the loop's counter"


def test_a_huge_attempt_count_stays_at_the_cap() -> None:
    assert Backoff(initial=0.1, maximum=5.0, jitter=0.0).delay(10_000) == 5.0


@pytest.mark.parametrize("kwargs", [{"jitter": -0.1}, {"jitter": 1.5}, {"initial": 0},
                                    {"initial": 2.0, "maximum": 1.0}, {"multiplier": 0.5}])
def test_a_nonsense_schedule_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_waypoint_retries_use_full_jitter_of_the_one_schedule() -> None:
    p = RetryPolicy(backoff_base_ms=10, backoff_max_ms=50)
    for retry_number, ceiling in ((1, 10), (2, 20), (3, 40), (4, 50)):
        a, b = random.Random(5), random.Random(5)
        expected = Backoff(initial=10, maximum=50, jitter=1.0, rng=b).delay(retry_number - 1)
        assert p.backoff_ms(retry_number, a) == expected
        assert 0 <= expected <= ceiling


def test_certificate_renewal_backs_off_on_the_one_schedule() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    nb, na, now = t0, t0 + dt.timedelta(hours=24), t0 + dt.timedelta(hours=12)
    for failures in range(1, 9):
        a, b = random.Random(failures), random.Random(failures)
        schedule = Backoff(initial=1, maximum=60, jitter=0.2, rng=a)
        expected = Backoff(initial=1, maximum=60, jitter=0.2, rng=b).delay(failures - 1)
        assert renewal_delay(nb, na, now, failures, schedule) == expected
        assert expected <= 60


def test_no_retry_loop_has_a_formula_of_its_own() -> None:
    """`2 ** n` with a variable n outside mesh/backoff.py is a second backoff."""
    copies = []
    for component in ("mesh", "nodeagent", "waypoint", "controller", "ambientctl", "ebpf"):
        for path in sorted((ROOT / component).rglob("*.py")):
            if path == ROOT / "mesh/backoff.py" or "_pb2" in path.name:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow)
                        and isinstance(node.left, ast.Constant) and node.left.value == 2
                        and not isinstance(node.right, ast.Constant)):
                    copies.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert copies == [], "use mesh.backoff.Backoff:\n" + "\n".join(copies)

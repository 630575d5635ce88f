"""Weighted backend choice."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from waypoint.weighted import WeightedPicker


def test_split_follows_weights_closely() -> None:
    picker = WeightedPicker([("v1", 90), ("v2", 10)], random.Random(7))
    counts = Counter(picker.pick() for _ in range(20_000))
    assert abs(counts["v2"] / 20_000 - 0.10) < 0.01


def test_zero_weight_is_never_picked() -> None:
    picker = WeightedPicker([("a", 0), ("b", 5)], random.Random(1))
    assert {picker.pick() for _ in range(500)} == {"b"}


def test_all_zero_weights_pick_nothing() -> None:
    assert WeightedPicker([("a", 0), ("b", 0)]).pick() is None
    assert WeightedPicker([]).pick() is None


def test_single_item_needs_no_rng() -> None:
    class Boom(random.Random):
        def randrange(self, *a: object, **k: object) -> int:
            raise AssertionError("rng used")
    assert WeightedPicker([("only", 3)], Boom()).pick() == "only"


def test_every_slot_maps_to_the_right_item() -> None:
    class Fixed(random.Random):
        def __init__(self, value: int) -> None:
            super().__init__()
            self.value = value

        def randrange(self, *a: object, **k: object) -> int:
            return self.value
    items = [("a", 2), ("b", 3), ("c", 1)]
    got = [WeightedPicker(items, Fixed(i)).pick() for i in range(6)]
    assert got == ["a", "a", "b", "b", "b", "c"]


def test_negative_weight_is_refused() -> None:
    with pytest.raises(ValueError, match="weight"):
        WeightedPicker([("a", -1)])

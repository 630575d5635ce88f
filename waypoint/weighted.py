"""Weighted choice among backendRefs (canary splits), with an injectable RNG so the
split is testable to the request."""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class WeightedPicker(Generic[T]):
    """Pick one item with probability weight / total. Zero-weight items are never
    picked; when every weight is zero `pick` returns None (Gateway API: answer 500)."""

    def __init__(self, items: Sequence[tuple[T, int]], rng: random.Random | None = None) -> None:
        self._items: list[T] = []
        self._cumulative: list[int] = []
        total = 0
        for item, weight in items:
            if weight < 0:
                raise ValueError(f"weight must be >= 0 (got {weight})")
            if weight == 0:
                continue
            total += weight
            self._items.append(item)
            self._cumulative.append(total)
        self._total = total
        self._rng = rng or random.Random()

    @property
    def total(self) -> int:
        return self._total

    def pick(self) -> T | None:
        if not self._items:
            return None
        if len(self._items) == 1:
            return self._items[0]
        r = self._rng.randrange(self._total)
        return self._items[bisect.bisect_right(self._cumulative, r)]

"""ambient_authz_policies_uncompilable_total{policy}: how many times a pushed policy
could not be compiled and was enforced as a deny-all.

The count is per process (compilation happens where snapshots are applied, which
holds no metrics object); each proxy registers `AuthzCollector` in its own registry
so its metrics endpoint serves it."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

_lock = threading.Lock()
_uncompilable: Counter[str] = Counter()


def count_uncompilable(policy: str) -> None:
    with _lock:
        _uncompilable[policy] += 1


def uncompilable_counts() -> dict[str, int]:
    with _lock:
        return dict(_uncompilable)


class AuthzCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "ambient_authz_policies_uncompilable",
            "Pushed AuthorizationPolicies that could not be compiled and were enforced as "
            "deny-all (times compiled)", labels=["policy"])
        for policy, n in sorted(uncompilable_counts().items()):
            family.add_metric([policy], n)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())

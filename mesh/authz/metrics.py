"""ambient_authz_uncompilable_policies{policy}: the pushed AuthorizationPolicies in force
that could not be compiled and are enforced as deny-all (1 each).

Read from the config in force at scrape time, so it needs no counter of its own: each
proxy registers an `AuthzCollector` over its current policies in its own registry."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mesh.authz.model import Policy

NAME = "ambient_authz_uncompilable_policies"


class AuthzCollector(Collector):
    def __init__(self, policies: Callable[[], Iterable[Policy]]) -> None:
        self._policies = policies

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            NAME, "AuthorizationPolicies in force that could not be compiled: enforced as a "
            "deny of everything they select until a good version is pushed",
            labels=["policy"])
        for key in sorted({p.key for p in self._policies() if p.error}):
            family.add_metric([key], 1)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

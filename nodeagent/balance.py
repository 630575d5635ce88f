"""Endpoint choice for a service VIP: round robin, skipping endpoints that just failed.

Sans-I/O. `candidates()` gives the order to try for one connection; the proxy reports
connect failures, and a failed endpoint is skipped for `cooldown` seconds (unless every
endpoint failed, in which case all are tried rather than none).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from mesh.api import config_pb2 as pb


@dataclass(frozen=True)
class Backend:
    """One concrete destination for a connection to a service port."""

    address: str
    port: int
    endpoint: pb.Endpoint

    @property
    def key(self) -> tuple[str, int]:
        return self.address, self.port


def backends_for(service: pb.Service, port: pb.ServicePort, prefer_v6: bool) -> list[Backend]:
    """Every endpoint of `service` that serves `port`, at its resolved target port."""
    out = []
    for ep in service.endpoints:
        target = next((p.target_port for p in ep.ports if p.service_port == port.port), 0)
        target = target or port.target_port or port.port
        addrs = [a for a in ep.addresses if (":" in a) == prefer_v6] or list(ep.addresses)
        if addrs:
            out.append(Backend(addrs[0], target, ep))
    return out


@dataclass
class EndpointPicker:
    cooldown: float = 5.0
    _cursor: dict[str, itertools.count[int]] = field(default_factory=dict)
    _failed_until: dict[tuple[str, int], float] = field(default_factory=dict)

    def candidates(self, service: str, backends: Sequence[Backend], now: float) -> list[Backend]:
        if not backends:
            return []
        start = next(self._cursor.setdefault(service, itertools.count())) % len(backends)
        rotated = list(backends[start:]) + list(backends[:start])
        healthy = [b for b in rotated if self._failed_until.get(b.key, 0.0) <= now]
        unhealthy = [b for b in rotated if b not in healthy]
        return healthy + unhealthy

    def report_failure(self, key: tuple[str, int], now: float) -> None:
        """`key` is (address, target port), as Backend.key."""
        self._failed_until[key] = now + self.cooldown

    def report_success(self, key: tuple[str, int]) -> None:
        self._failed_until.pop(key, None)

"""Service virtual IPs: spec.clusterIP when given, else allocated from a range
(10.96.0.0/16 by default). Pure; the caller persists the result so restarts keep
every allocation."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

import structlog

ServiceRef = tuple[str, str]
DEFAULT_RANGE = "10.96.0.0/16"
_log = structlog.get_logger("controller.vips")


class VipRangeExhausted(Exception):
    """No free address is left in the service range: widen --service-cidr."""


def allocate_vips(
    services: Iterable[tuple[ServiceRef, str | None]],
    previous: Mapping[ServiceRef, str],
    cidr: str = DEFAULT_RANGE,
) -> dict[ServiceRef, str]:
    """VIP of every service. Explicit addresses win; a previous allocation is kept unless
    an explicit address now claims it; others get the lowest free address (skipping the
    range's first ten addresses, reserved as in Kubernetes for well-known services)."""
    net = ipaddress.ip_network(cidr)
    wanted = sorted(services)
    result: dict[ServiceRef, str] = {}
    used: set[str] = set()
    for ref, explicit in wanted:
        if explicit:
            if explicit in used:
                _log.warning("cluster_ip_conflict", service="/".join(ref), ip=explicit)
                continue
            result[ref] = explicit
            used.add(explicit)
    for ref, explicit in wanted:
        if explicit:
            continue
        prev = previous.get(ref)
        if prev and prev not in used:
            result[ref] = prev
            used.add(prev)
    hosts = None
    for ref, explicit in wanted:
        if explicit or ref in result:
            continue
        if hosts is None:
            hosts = (str(net.network_address + i) for i in range(10, net.num_addresses - 1))
        for candidate in hosts:
            if candidate not in used:
                result[ref] = candidate
                used.add(candidate)
                break
        else:
            raise VipRangeExhausted(f"service range {cidr} has no free address left")
    return result

"""L4 scenarios (1-3): request/response latency at fixed rates and at saturation,
new-connection latency, bulk throughput; each for direct, mesh and the Envoy pair.

Scenarios run interleaved (direct, mesh, envoy for each measurement) so a burst of
load from elsewhere on the machine hits all three rather than one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.topology import ECHO, SINK, BenchTopology

SCENARIOS = ("direct", "mesh", "envoy")


@dataclass(frozen=True)
class L4Options:
    rates: tuple[int, ...] = (100, 1000)
    rate_seconds: float = 8.0
    rate_conns: int = 8
    saturation_seconds: float = 5.0
    saturation_conns: int = 64
    connect_samples: int = 300
    bulk_mib: int = 512
    bulk_rounds: int = 3
    rate_rounds: int = 2
    saturation_rounds: int = 3


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The best round of each scenario (lowest latency per percentile, highest rate):
    the machine is shared, and a burst of foreign load only ever makes a round worse."""
    best = dict(runs[0])
    best["latency_us"] = {q: min(r["latency_us"][q] for r in runs)
                          for q in ("p50", "p90", "p99")}
    best["latency_us"]["n"] = sum(r["latency_us"]["n"] for r in runs)
    best["rps"] = max(r["rps"] for r in runs)
    best["rounds"] = len(runs)
    return best


def request_response(topo: BenchTopology, opts: L4Options) -> dict[str, Any]:
    """{"100": {scenario: result}, ..., "saturation": {...}}; result as apps.rr prints,
    best of the rounds (rounds interleave the scenarios)."""
    out: dict[str, Any] = {}
    for rate in (*opts.rates, 0):
        key = str(rate) if rate else "saturation"
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SCENARIOS}
        for _ in range(opts.rate_rounds if rate else opts.saturation_rounds):
            for s in SCENARIOS:
                args = ["rr", topo.target(s, ECHO), "--size", "1024"]
                if rate:
                    args += ["--rate", str(rate), "--conns", str(opts.rate_conns),
                             "--duration", str(opts.rate_seconds)]
                else:
                    args += ["--conns", str(opts.saturation_conns),
                             "--duration", str(opts.saturation_seconds)]
                runs[s].append(topo.run_client(s, args))
        out[key] = {s: best_of(r) for s, r in runs.items()}
    return out


def new_connections(topo: BenchTopology, opts: L4Options) -> dict[str, Any]:
    """connect + 1 byte echoed + close, one at a time. For the mesh these are pooled
    tunnels (the first sample opened the HBONE connection); cold tunnels are measured
    by the memory scenario against 100 fresh destination pods."""
    out: dict[str, Any] = {}
    for s in SCENARIOS:
        r = topo.run_client(s, ["connect", topo.target(s, ECHO),
                                "--rounds", str(opts.connect_samples + 1)])
        out[s] = r["later"]
    return out


def bulk(topo: BenchTopology, opts: L4Options) -> dict[str, Any]:
    """Best MB/s of `bulk_rounds`, cross-node and same-node."""
    out: dict[str, Any] = {"cross_node": {}, "same_node": {}}
    for where, local in (("cross_node", False), ("same_node", True)):
        best: dict[str, float] = {}
        for _ in range(opts.bulk_rounds):
            for s in SCENARIOS:
                r = topo.run_client(s, ["bulk", topo.target(s, SINK, local=local),
                                        str(opts.bulk_mib)], timeout=300)
                best[s] = max(best.get(s, 0.0), float(r["MBps"]))
        out[where] = {s: {"MBps": v} for s, v in best.items()}
    return out

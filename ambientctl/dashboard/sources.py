"""Where the dashboard's numbers come from: the mesh's Prometheus when `up
--observability` started one, else the proxies scraped directly.

Both answer the same question, one `Reading`: for each metric the dashboard uses,
every series' total and its per-second rate over the last minute, plus a short
history of per-workload request rates for the sparklines. The graph is built from a
Reading alone (dashboard.graph), so both sources draw the same picture."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from ambientctl import promtext

Labels = tuple[tuple[str, str], ...]

METRICS = (
    "istio_requests_total",
    "istio_request_duration_milliseconds_bucket",
    "istio_request_bytes_total",
    "istio_response_bytes_total",
    "istio_tcp_connections_opened_total",
    "istio_tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
)
WINDOW = 60.0        # seconds: the `[1m]` of every rate
HISTORY = 300.0      # seconds of sparkline
SPARK_STEP = 10.0    # seconds between sparkline points


def key(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def workload_id(labels: dict[str, str], side: str = "destination") -> str:
    ns = labels.get(f"{side}_workload_namespace", "unknown")
    return f"{ns}/{labels.get(f'{side}_workload', 'unknown')}"


@dataclass
class Reading:
    source: str                                   # "prometheus URL" or "direct scrape"
    totals: dict[str, dict[Labels, float]] = field(default_factory=dict)
    rates: dict[str, dict[Labels, float]] = field(default_factory=dict)
    spark: dict[str, list[float]] = field(default_factory=dict)  # workload -> req/s
    problems: list[str] = field(default_factory=list)
    at: float = field(default_factory=time.time)


class Source(Protocol):
    async def read(self) -> Reading: ...


# ---- Prometheus ----------------------------------------------------------------------
class PrometheusSource:
    """Instant queries for totals and `rate(...[1m])`, a range query for sparklines."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self.session = session

    async def query(self, promql: str) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.url}/api/v1/query", params={"query": promql},
                                    timeout=aiohttp.ClientTimeout(total=5)) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {promql!r}: {body.get('error')}")
        return list(body["data"]["result"])

    async def query_range(self, promql: str, seconds: float, step: float
                          ) -> list[dict[str, Any]]:
        end = time.time()
        params = {"query": promql, "start": f"{end - seconds:.3f}", "end": f"{end:.3f}",
                  "step": f"{step:g}"}
        async with self.session.get(f"{self.url}/api/v1/query_range", params=params,
                                    timeout=aiohttp.ClientTimeout(total=5)) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {promql!r}: {body.get('error')}")
        return list(body["data"]["result"])

    async def read(self) -> Reading:
        reading = Reading(f"Prometheus {self.url}")

        async def one(metric: str) -> None:
            totals, rates = await asyncio.gather(
                self.query(metric), self.query(f"rate({metric}[1m])"))
            reading.totals[metric] = {key(_drop_name(r["metric"])): float(r["value"][1])
                                      for r in totals}
            reading.rates[metric] = {key(_drop_name(r["metric"])): float(r["value"][1])
                                     for r in rates}

        try:
            await asyncio.gather(*(one(m) for m in METRICS))
            spark = await self.query_range(
                "sum by (destination_workload_namespace, destination_workload) "
                "(rate(istio_requests_total{reporter=\"waypoint\"}[1m])) or "
                "sum by (destination_workload_namespace, destination_workload) "
                "(rate(istio_tcp_connections_opened_total{reporter=\"destination\"}[1m]))",
                HISTORY, SPARK_STEP)
            for r in spark:
                reading.spark[workload_id(r["metric"])] = [float(v) for _, v in r["values"]]
        except (aiohttp.ClientError, TimeoutError, RuntimeError, KeyError, ValueError) as e:
            reading.problems.append(f"Prometheus {self.url}: {e or type(e).__name__}")
        return reading


def _drop_name(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k not in ("__name__", "job", "component")}


# ---- direct scrape -------------------------------------------------------------------
@dataclass
class _Snapshot:
    at: float
    values: dict[str, dict[Labels, float]]


class DirectSource:
    """Scrapes controller, node agents and waypoints (as `ambientctl metrics` does)
    and computes rates from its own history of scrapes, kept in memory."""

    def __init__(self, scrape: Any) -> None:
        # scrape() -> ([(instance, text)], [problems]); blocking, run in a thread.
        self.scrape = scrape
        self.history: deque[_Snapshot] = deque()

    async def read(self) -> Reading:
        sources, problems = await asyncio.to_thread(self.scrape)
        now = time.time()
        snap = _Snapshot(now, parse_samples(sources))
        self.history.append(snap)
        while self.history and now - self.history[0].at > HISTORY + WINDOW:
            self.history.popleft()
        reading = Reading("direct scrape of every proxy", problems=list(problems), at=now)
        reading.totals = snap.values
        base = self._at_or_before(now - WINDOW)
        reading.rates = rates_between(base, snap)
        reading.spark = self._spark(now)
        return reading

    def _at_or_before(self, t: float) -> _Snapshot:
        """The newest snapshot taken at or before t, else the oldest one."""
        best = self.history[0]
        for s in self.history:
            if s.at <= t:
                best = s
        return best

    def _spark(self, now: float) -> dict[str, list[float]]:
        points: dict[str, list[float]] = {}
        snaps = list(self.history)
        for i in range(1, len(snaps)):
            r = rates_between(snaps[i - 1], snaps[i])
            per = workload_rates(r)
            for wl in set(points) | set(per):
                points.setdefault(wl, [0.0] * (i - 1)).append(per.get(wl, 0.0))
        return points


def parse_samples(sources: Iterable[tuple[str, str]]) -> dict[str, dict[Labels, float]]:
    out: dict[str, dict[Labels, float]] = {m: {} for m in METRICS}
    for instance, text in sources:
        try:
            families = promtext.parse(text)
        except ValueError:
            continue  # a half-written exposition: the next scrape will do
        for fam in families:
            for s in fam.samples:
                if s.name in out:
                    out[s.name][key({**s.labels, "instance": instance})] = float(s.value)
    return out


def rates_between(old: _Snapshot, new: _Snapshot) -> dict[str, dict[Labels, float]]:
    """Per-second increase of every series; a counter that went down was reset (the
    proxy restarted), so its new value is the increase, as in PromQL's rate()."""
    dt = new.at - old.at
    out: dict[str, dict[Labels, float]] = {}
    for metric, series in new.values.items():
        before = old.values.get(metric, {})
        out[metric] = {}
        for k, v in series.items():
            prev = before.get(k, 0.0)
            inc = v - prev if v >= prev else v
            out[metric][k] = inc / dt if dt > 0 else 0.0
    return out


def workload_rates(rates: dict[str, dict[Labels, float]]) -> dict[str, float]:
    """Requests/s into each workload (waypoint's view), else new connections/s."""
    per: dict[str, float] = {}
    for k, v in rates.get("istio_requests_total", {}).items():
        labels = dict(k)
        if labels.get("reporter") == "waypoint":
            wl = workload_id(labels)
            per[wl] = per.get(wl, 0.0) + v
    http = set(per)
    for k, v in rates.get("istio_tcp_connections_opened_total", {}).items():
        labels = dict(k)
        wl = workload_id(labels)
        if labels.get("reporter") == "destination" and wl not in http:
            per[wl] = per.get(wl, 0.0) + v
    return per

"""Istio-standard HTTP metrics of the waypoint (reporter="waypoint"), labelled as
Istio's so existing Grafana and Kiali dashboards work unchanged. Each waypoint owns
its own registry: no process-global metric state.

The four per-request series (requests, duration histogram, request and response
bytes) are kept by `RequestStats`, a collector of plain counters keyed by the label
tuple, not by prometheus_client's labelled metrics: `labels(...)` validates and locks
per call and a Histogram child observes in Python under a lock, which together cost
the waypoint ~5 % of its CPU per request under load (py-spy, docs/performance.md).
Here a request is one dict lookup, a bisect and four additions; the work of
rendering moves to the scrape."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mesh.telemetry.labels import HTTP_LABELS, http_label_values

LABELS = HTTP_LABELS
# Istio's default buckets for istio_request_duration_milliseconds.
DURATION_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
                    300000, 600000, 1800000, 3600000)


class RequestLabels(NamedTuple):
    """The labels of one request (reporter is always "waypoint"). A tuple, so it is
    built in C and serves as the series key as it is; `values()` renders it through
    the builder both proxies share (mesh.telemetry.labels)."""

    source_workload: str
    source_workload_namespace: str
    source_principal: str
    source_app: str
    destination_workload: str
    destination_workload_namespace: str
    destination_principal: str
    destination_app: str
    destination_service: str
    destination_service_name: str
    destination_service_namespace: str
    request_protocol: str  # "http" or "grpc"
    response_code: int
    response_flags: str
    connection_security_policy: str  # "mutual_tls" or "none"

    def values(self) -> tuple[str, ...]:
        return http_label_values("waypoint", self[:11], self.request_protocol,
                                 self.response_code, self.response_flags,
                                 self.connection_security_policy)


class _Series:
    __slots__ = ("buckets", "count", "duration_sum", "request_bytes", "response_bytes")

    def __init__(self) -> None:
        self.count = 0
        self.duration_sum = 0.0
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # per bucket, last: +Inf
        self.request_bytes = 0
        self.response_bytes = 0


class RequestStats(Collector):
    """istio_requests_total, istio_request_duration_milliseconds,
    istio_request_bytes_total and istio_response_bytes_total, one series per label
    tuple, rendered when scraped."""

    def __init__(self) -> None:
        self._series: dict[RequestLabels, _Series] = {}

    def observe(self, labels: RequestLabels, duration_ms: float, request_bytes: int,
                response_bytes: int) -> None:
        s = self._series.get(labels)
        if s is None:
            s = self._series[labels] = _Series()
        s.count += 1
        s.duration_sum += duration_ms
        s.buckets[bisect.bisect_left(DURATION_BUCKETS, duration_ms)] += 1
        s.request_bytes += request_bytes
        s.response_bytes += response_bytes

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("istio_requests", "Requests handled by the waypoint",
                                       labels=LABELS)
        duration = HistogramMetricFamily("istio_request_duration_milliseconds",
                                         "Request duration in milliseconds", labels=LABELS)
        req_bytes = CounterMetricFamily("istio_request_bytes", "Request body bytes",
                                        labels=LABELS)
        resp_bytes = CounterMetricFamily("istio_response_bytes", "Response body bytes",
                                         labels=LABELS)
        bounds = [floatToGoString(b) for b in DURATION_BUCKETS] + ["+Inf"]
        for labels, s in list(self._series.items()):
            values = list(labels.values())
            requests.add_metric(values, s.count)
            cumulative, running = [], 0
            for bound, n in zip(bounds, s.buckets, strict=True):
                running += n
                cumulative.append((bound, running))
            duration.add_metric(values, cumulative, s.duration_sum)
            req_bytes.add_metric(values, s.request_bytes)
            resp_bytes.add_metric(values, s.response_bytes)
        yield from (requests, duration, req_bytes, resp_bytes)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class WaypointMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = RequestStats()
        self.registry.register(self.requests)
        self.ejected = Gauge("ambient_waypoint_ejected_endpoints",
                             "Endpoints ejected by outlier detection",
                             ("destination_service",), registry=self.registry)
        self.retries = Counter("ambient_waypoint_retries_total", "Retries sent",
                               ("destination_service",), registry=self.registry)
        self.retry_budget_exhausted = Counter(
            "ambient_waypoint_retry_budget_exhausted_total",
            "Retries not sent because the retry budget was exhausted",
            ("destination_service",), registry=self.registry)

    def observe(self, labels: RequestLabels, duration_ms: float, request_bytes: int,
                response_bytes: int) -> None:
        self.requests.observe(labels, duration_ms, request_bytes, response_bytes)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

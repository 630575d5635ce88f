"""Istio-standard HTTP metrics of the waypoint (reporter="waypoint"), labelled as
Istio's so existing Grafana and Kiali dashboards work unchanged. Each waypoint owns
its own registry: no process-global metric state."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LABELS = (
    "reporter", "source_workload", "source_workload_namespace", "source_principal",
    "destination_workload", "destination_workload_namespace", "destination_service",
    "destination_service_name", "destination_service_namespace", "destination_principal",
    "request_protocol", "response_code", "response_flags", "connection_security_policy",
)
# Istio's default buckets for istio_request_duration_milliseconds.
DURATION_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
                    300000, 600000, 1800000, 3600000)


@dataclass(frozen=True)
class RequestLabels:
    source_workload: str
    source_workload_namespace: str
    source_principal: str
    destination_workload: str
    destination_workload_namespace: str
    destination_service: str
    destination_service_name: str
    destination_service_namespace: str
    destination_principal: str
    request_protocol: str  # "http" or "grpc"
    response_code: int
    response_flags: str
    connection_security_policy: str  # "mutual_tls" or "none"

    def values(self) -> tuple[str, ...]:
        return (
            "waypoint", self.source_workload, self.source_workload_namespace,
            self.source_principal, self.destination_workload,
            self.destination_workload_namespace, self.destination_service,
            self.destination_service_name, self.destination_service_namespace,
            self.destination_principal, self.request_protocol, str(self.response_code),
            self.response_flags, self.connection_security_policy,
        )


class WaypointMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("istio_requests_total", "Requests handled by the waypoint",
                                LABELS, registry=self.registry)
        self.duration = Histogram("istio_request_duration_milliseconds",
                                  "Request duration in milliseconds", LABELS,
                                  buckets=DURATION_BUCKETS, registry=self.registry)
        self.request_bytes = Counter("istio_request_bytes_total", "Request body bytes",
                                     LABELS, registry=self.registry)
        self.response_bytes = Counter("istio_response_bytes_total", "Response body bytes",
                                      LABELS, registry=self.registry)
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
        v = labels.values()
        self.requests.labels(*v).inc()
        self.duration.labels(*v).observe(duration_ms)
        self.request_bytes.labels(*v).inc(request_bytes)
        self.response_bytes.labels(*v).inc(response_bytes)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

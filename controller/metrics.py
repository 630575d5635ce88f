"""Controller Prometheus metrics, named after istiod's where one exists
(pilot_xds_pushes, pilot_xds, pilot_total_xds_rejects, pilot_proxy_convergence_time)
so existing dashboards show something meaningful. One registry per controller
instance: no global state, several controllers can live in one test process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.pushes = Counter("pilot_xds_pushes", "Snapshots pushed to proxies.", ["type"],
                              registry=r)
        self.connected = Gauge("pilot_xds", "Proxies connected to this controller.", ["type"],
                               registry=r)
        self.rejects = Counter("pilot_total_xds_rejects",
                               "Snapshots a proxy NACKed (rejected).", ["type"], registry=r)
        self.convergence = Histogram(
            "pilot_proxy_convergence_time",
            "Seconds from a config change to the new snapshot written to a proxy.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.ack_latency = Histogram(
            "ambient_controller_push_ack_seconds",
            "Seconds from a snapshot written to its ACK or NACK.", ["type"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.build_seconds = Histogram(
            "ambient_controller_snapshot_build_seconds",
            "Seconds to rebuild the cluster view and every proxy's snapshot after a change.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.push_bytes = Counter("ambient_controller_push_bytes",
                                  "Snapshot bytes written to proxies.", ["type"], registry=r)
        self.config_rejected = Counter(
            "ambient_controller_config_rejected",
            "Applies and file reloads refused because the input was invalid.", ["source"],
            registry=r)
        self.certificates_issued = Counter(
            "ambient_controller_certificates_issued",
            "Workload certificates the CA signed.", registry=r)
        self.csr_refused = Counter(
            "ambient_controller_csr_refused",
            "Certificate requests refused, by reason (see docs/security.md).", ["reason"],
            registry=r)
        self.config_objects = Gauge("ambient_controller_config_objects",
                                    "Objects in force, by kind.", ["kind"], registry=r)
        for kind in ("node", "waypoint"):
            self.pushes.labels(kind)
            self.connected.labels(kind)
            self.rejects.labels(kind)
            self.ack_latency.labels(kind)
            self.push_bytes.labels(kind)

    def render(self) -> bytes:
        return generate_latest(self.registry)

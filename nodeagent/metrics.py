"""Istio-standard TCP metrics of the node proxy, so existing dashboards work unchanged.

One registry per proxy (no global state): the metrics endpoint serves exactly it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from mesh.api import config_pb2 as pb
from mesh.telemetry.labels import (
    NO_SERVICE,
    TCP_LABELS,
    UNKNOWN,
    Party,
    ServiceRef,
    party,
    peer_values,
    source_party,
    tcp_label_values,
)

LABELS = TCP_LABELS


@dataclass(frozen=True)
class ConnectionLabels:
    """What the node proxy knows of one connection; `values()` builds Istio's label
    set from it in the one place both proxies use (mesh.telemetry.labels)."""

    reporter: str  # "source" (outbound side) or "destination" (inbound side)
    source_workload: str = UNKNOWN
    source_workload_namespace: str = UNKNOWN
    source_principal: str = UNKNOWN
    destination_workload: str = UNKNOWN
    destination_workload_namespace: str = UNKNOWN
    destination_service: str = UNKNOWN
    destination_principal: str = UNKNOWN
    request_protocol: str = "tcp"
    response_flags: str = "-"
    connection_security_policy: str = UNKNOWN  # mutual_tls | none
    source_app: str = UNKNOWN
    destination_app: str = UNKNOWN

    def values(self) -> tuple[str, ...]:
        host = self.destination_service
        name, _, rest = host.partition(".")
        namespace = rest.partition(".")[0] if rest else ""
        service = ServiceRef(host, name, namespace) if namespace else NO_SERVICE
        return tcp_label_values(
            self.reporter,
            peer_values(
                Party(self.source_workload, self.source_workload_namespace,
                      self.source_principal or UNKNOWN, self.source_app),
                Party(self.destination_workload, self.destination_workload_namespace,
                      self.destination_principal or UNKNOWN, self.destination_app),
                service),
            self.response_flags, self.connection_security_policy)


def caller(workload: pb.Workload | None, principal: str | None) -> Party:
    """Who a connection comes from, as the waypoint names it too: the workload at its
    source address (None: not in the snapshot), trusted for a verified peer only when
    the certificate proves it (mesh.telemetry.labels.source_party)."""
    at = party(workload.name, workload.namespace, workload.labels, workload.identity) \
        if workload is not None else None
    return source_party(at, principal)


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.opened = Counter("istio_tcp_connections_opened", "TCP connections opened",
                              LABELS, registry=self.registry)
        self.closed = Counter("istio_tcp_connections_closed", "TCP connections closed",
                              LABELS, registry=self.registry)
        # Istio's definitions: "sent" is the response direction, "received" the request.
        self.sent = Counter("istio_tcp_sent_bytes", "Bytes sent during response",
                            LABELS, registry=self.registry)
        self.received = Counter("istio_tcp_received_bytes", "Bytes received during request",
                                LABELS, registry=self.registry)
        self.enrolled_pods = Gauge("ambient_enrolled_pods", "Pods captured on this node",
                                   registry=self.registry)
        self.config_version = Gauge("ambient_config_applied", "Applied snapshot version",
                                    ["version"], registry=self.registry)
        # Not an Istio metric: ztunnel reports these only as logs. reason: connect_timeout
        # | connect_failed | keepalive_timeout; phase: where (tcp_connect, tls_handshake,
        # http2_settings, connect_response, established).
        self.tunnel_failures = Counter(
            "ambient_tunnel_failures", "HBONE tunnels to a peer proxy that could not be "
            "opened in time or died (link cut, peer hung)", ["reason", "phase"],
            registry=self.registry)

        # Fail-closed refusals (nodeagent.admission, outbound_plan): cause is
        # waypoint_unavailable | no_config | policy_unknown | certificate_pending;
        # direction outbound | inbound | inbound_plaintext.
        self.refusals = Counter(
            "ambient_connections_refused", "Connections the node proxy refused because "
            "what would decide them is missing (no config, no policy, no certificate, "
            "waypoint unavailable)", ["cause", "direction"], registry=self.registry)
        self.waypoint_unavailable = Counter(
            "ambient_waypoint_unavailable", "Connections refused because the waypoint they "
            "are bound to had no ready address or no Gateway", ["waypoint"],
            registry=self.registry)

        self.waiting_for_certificate = Gauge(
            "ambient_pods_waiting_for_certificate", "Captured pods with no certificate yet "
            "(CA refused or unreachable): their connections are refused",
            registry=self.registry)

        # Same-node connections that skipped the tunnel (nodeagent.proxy.same_node):
        # path splice (kernel, bpf_sk_redirect_hash) | relay (user space).
        self.same_node_connections = Counter(
            "ambient_same_node_connections", "Same-node connections served without the "
            "HBONE tunnel, by how their bytes were relayed", ["path"], registry=self.registry)
        self.splice_fallbacks = Counter(
            "ambient_splice_fallback", "Same-node connections relayed in user space "
            "because the kernel splice could not be set up (not_installed | map_full | "
            "kernel_refused | disabled)", ["reason"], registry=self.registry)
        self.splice_user_bytes = Counter(
            "ambient_splice_user_space_bytes", "Bytes of spliced connections the proxy "
            "forwarded itself (paused: the far reader fell behind)", registry=self.registry)
        self.connections_cut = Counter(
            "ambient_connections_cut", "Live connections reset because a new snapshot "
            "denies them", ["direction"], registry=self.registry)

    def same_node(self, path: str) -> None:
        self.same_node_connections.labels(path).inc()

    def splice_fallback(self, reason: str) -> None:
        self.splice_fallbacks.labels(reason).inc()

    def watch_inbound_capture(self, drops: Callable[[], dict[str, int]]) -> None:
        """Export the kernel's inbound capture drops (Redirector.inbound_drops)."""
        self.registry.register(InboundCaptureDrops(drops))

    def refused(self, cause: str, direction: str, waypoint: str = "") -> None:
        self.refusals.labels(cause, direction).inc()
        if waypoint:
            self.waypoint_unavailable.labels(waypoint).inc()

    def connection_opened(self, labels: ConnectionLabels) -> None:
        self.opened.labels(*labels.values()).inc()

    def connection_closed(
        self, labels: ConnectionLabels, request_bytes: int, response_bytes: int
    ) -> None:
        values = labels.values()
        self.closed.labels(*values).inc()
        self.received.labels(*values).inc(request_bytes)
        self.sent.labels(*values).inc(response_bytes)

    def tunnel_failed(self, reason: str, phase: str) -> None:
        self.tunnel_failures.labels(reason, phase).inc()


class InboundCaptureDrops(Collector):
    """ambient_inbound_capture_drops_total{reason}: connections into an enrolled pod
    that the sk_lookup program dropped because it could not hand them to this proxy
    (no_pod, no_listener, assign_failed: capture fails closed). Read from the BPF
    counter map at scrape time; the kernel counts, nothing here does."""

    def __init__(self, drops: Callable[[], dict[str, int]]) -> None:
        self._drops = drops

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "ambient_inbound_capture_drops", "Connections into enrolled pods dropped by "
            "the kernel's inbound capture (no pod record, no proxy listener)",
            labels=["reason"])
        counts: dict[str, int] = {}
        with contextlib.suppress(Exception):  # maps closed at shutdown: no sample
            counts = self._drops()
        for reason, n in sorted(counts.items()):
            family.add_metric([reason], n)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())

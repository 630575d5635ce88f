"""The service graph and the golden-metrics table, built from one Reading (totals and
rates of the Istio standard metrics) and the denials found in the access logs.

Pure functions over plain data, so every rule (which reporter wins, what a waypoint
edge is, what counts as success) is unit tested without a mesh.

- HTTP edges come from the waypoints (reporter="waypoint"): source workload ->
  destination service -> destination workload, marked with the waypoint that saw
  them; success = share of responses that are not 5xx (Istio's definition); p99 from
  the duration histogram, interpolated within buckets as PromQL's histogram_quantile.
- TCP edges come from the node proxies, the destination's view preferred (only it
  sees plaintext callers from outside the mesh). Hops into and out of a waypoint are
  not drawn as TCP edges when the waypoint reported the HTTP requests they carried.
- A denied edge carries the count and the policy that denied it."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from ambientctl.dashboard.sources import Labels, Reading, workload_id


@dataclass
class EdgeStats:
    source: str
    target: str
    protocol: str
    mtls: bool = False
    waypoint: str = ""
    source_principal: str = ""
    requests: float = 0.0          # total requests (http) or connections (tcp)
    rps: float = 0.0               # per second over the last minute
    errors_rps: float = 0.0
    bytes_per_s: float = 0.0
    p99_ms: float | None = None
    denied: int = 0
    denied_policy: str = ""
    denied_reason: str = ""
    buckets: dict[float, float] = field(default_factory=dict, repr=False)

    @property
    def id(self) -> str:
        return f"{self.source}->{self.target}:{self.protocol}"

    @property
    def success(self) -> float | None:
        return None if self.rps <= 0 else max(0.0, 1.0 - self.errors_rps / self.rps)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("buckets")
        d["id"] = self.id
        d["success"] = self.success
        return d


@dataclass(frozen=True)
class Denial:
    source: str
    target: str
    policy: str
    reason: str
    count: int
    last: float


def known(value: str | None) -> bool:
    return value not in (None, "", "unknown")


SERVICE = "svc:"


def short_service(host: str) -> str:
    """catalog.demo.svc.cluster.local -> svc:demo/catalog (the graph's service node id;
    the prefix keeps it apart from a workload of the same name)."""
    parts = host.split(".")
    return SERVICE + (f"{parts[1]}/{parts[0]}" if len(parts) >= 2 else host)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """PromQL's histogram_quantile over cumulative bucket rates {le: rate}."""
    if not buckets:
        return None
    items = sorted(buckets.items())
    total = items[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in items:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def _rate(reading: Reading, metric: str, k: Labels) -> float:
    return reading.rates.get(metric, {}).get(k, 0.0)


def build(reading: Reading, waypoints: list[str], denials: list[Denial]
          ) -> dict[str, Any]:
    """{nodes, edges, workloads} ready for the page (cytoscape elements + table)."""
    edges: dict[str, EdgeStats] = {}
    nodes: dict[str, dict[str, Any]] = {}
    waypoint_workloads = {w for w in waypoints}

    def node(ref: str, kind: str) -> None:
        ns, _, name = ref.removeprefix(SERVICE).partition("/")
        current = nodes.get(ref)
        if current is None or (current["kind"] == "workload" and kind != "workload"):
            kind = "waypoint" if ref in waypoint_workloads else kind
            nodes[ref] = {"id": ref, "namespace": ns, "name": name, "kind": kind}

    def edge(src: str, dst: str, proto: str) -> EdgeStats:
        e = EdgeStats(src, dst, proto)
        return edges.setdefault(e.id, e)

    # HTTP, as the waypoints saw it.
    for k, total in reading.totals.get("istio_requests_total", {}).items():
        lab = dict(k)
        if lab.get("reporter") != "waypoint":
            continue
        src, dst = workload_id(lab, "source"), workload_id(lab, "destination")
        wp = lab.get("instance", "").removeprefix("waypoint/")
        service = lab.get("destination_service", "")
        svc = short_service(service) if known(service) else ""
        rate = _rate(reading, "istio_requests_total", k)
        code = lab.get("response_code", "")
        # A request refused at the waypoint (403 by policy, 503 with no backend) never
        # reached a workload: it ends at the service.
        reached = known(lab.get("destination_workload"))
        hops = [(src, svc)] + ([(svc, dst)] if reached else []) if svc else [(src, dst)]
        node(src, "workload")
        if reached or not svc:
            node(dst, "workload")
        if svc:
            node(svc, "service")
        for a, b in hops:
            e = edge(a, b, lab.get("request_protocol", "http"))
            e.mtls = e.mtls or lab.get("connection_security_policy") == "mutual_tls"
            e.waypoint = wp
            if known(lab.get("source_principal")):
                e.source_principal = lab["source_principal"]
            e.requests += total
            e.rps += rate
            if code.startswith("5"):
                e.errors_rps += rate
    for metric in ("istio_request_bytes_total", "istio_response_bytes_total"):
        for k, rate in reading.rates.get(metric, {}).items():
            lab = dict(k)
            if lab.get("reporter") != "waypoint":
                continue
            src, dst = workload_id(lab, "source"), workload_id(lab, "destination")
            service = lab.get("destination_service", "")
            first = short_service(service) if known(service) else dst
            proto = lab.get("request_protocol", "http")
            hop_ids = {EdgeStats(src, first, proto).id, EdgeStats(first, dst, proto).id}
            for hop_id in hop_ids:
                into = edges.get(hop_id)
                if into is not None:
                    into.bytes_per_s += rate
    for k, rate in reading.rates.get("istio_request_duration_milliseconds_bucket", {}).items():
        lab = dict(k)
        if lab.get("reporter") != "waypoint":
            continue
        src, dst = workload_id(lab, "source"), workload_id(lab, "destination")
        service = lab.get("destination_service", "")
        first = short_service(service) if known(service) else dst
        hop = edges.get(EdgeStats(src, first, lab.get("request_protocol", "http")).id)
        if hop is not None:
            le = float(lab.get("le", "+Inf"))
            hop.buckets[le] = hop.buckets.get(le, 0.0) + rate
    for e in edges.values():
        if e.buckets:
            e.p99_ms = histogram_quantile(0.99, e.buckets)
    # Service -> workload hops share the p99 of the request edge into the service.
    for e in edges.values():
        if e.p99_ms is None and nodes.get(e.source, {}).get("kind") == "service":
            p99s = [x.p99_ms for x in edges.values() if x.target == e.source]
            known_p99 = [p for p in p99s if p is not None]
            e.p99_ms = max(known_p99) if known_p99 else None

    # TCP, as the node proxies saw it: destination's view per flow, else source's.
    flows: dict[tuple[str, str, str], tuple[str, Labels]] = {}
    for k in reading.totals.get("istio_tcp_connections_opened_total", {}):
        lab = dict(k)
        src, dst = workload_id(lab, "source"), workload_id(lab, "destination")
        flow = (src, dst, lab.get("connection_security_policy", ""))
        rep = lab.get("reporter", "")
        if flow not in flows or rep == "destination":
            flows[flow] = (rep, k)
    # The caller's hop into a waypoint, drawn to the service it addressed.
    for k, total in reading.totals.get("istio_tcp_connections_opened_total", {}).items():
        lab = dict(k)
        dst, service = workload_id(lab, "destination"), lab.get("destination_service", "")
        if lab.get("reporter") != "source" or dst not in waypoint_workloads or \
                not known(service):
            continue
        src = workload_id(lab, "source")
        node(src, "workload")
        node(short_service(service), "service")
        e = edge(src, short_service(service), "tcp")
        e.waypoint = dst
        e.mtls = e.mtls or lab.get("connection_security_policy") == "mutual_tls"
        e.requests += total
        e.rps += _rate(reading, "istio_tcp_connections_opened_total", k)
        if known(lab.get("source_principal")):
            e.source_principal = lab["source_principal"]
        for metric in ("istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total"):
            e.bytes_per_s += _rate(reading, metric, k)
    for (src, dst, security), (rep, _) in flows.items():
        if src in waypoint_workloads or dst in waypoint_workloads:
            continue  # hops of a waypoint: drawn as the HTTP edges it reported
        node(src, "workload")
        node(dst, "workload")
        e = edge(src, dst, "tcp")
        e.mtls = e.mtls or security == "mutual_tls"
        for k, total in reading.totals["istio_tcp_connections_opened_total"].items():
            lab = dict(k)
            if (workload_id(lab, "source"), workload_id(lab, "destination"),
                    lab.get("connection_security_policy", ""), lab.get("reporter")) != (
                    src, dst, security, rep):
                continue
            e.requests += total
            e.rps += _rate(reading, "istio_tcp_connections_opened_total", k)
            if known(lab.get("source_principal")):
                e.source_principal = lab["source_principal"]
        for metric in ("istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total"):
            for k, rate in reading.rates.get(metric, {}).items():
                lab = dict(k)
                if (workload_id(lab, "source"), workload_id(lab, "destination"),
                        lab.get("connection_security_policy", ""), lab.get("reporter")) == (
                        src, dst, security, rep):
                    e.bytes_per_s += rate

    for w in waypoints:
        node(w, "waypoint")
    for d in denials:
        node(d.source, "workload")
        node(d.target, "service" if d.target.startswith(SERVICE) else "workload")
        # On the edge the denied traffic took: HTTP when a waypoint refused it.
        same = sorted((x for x in edges.values() if (x.source, x.target) == (d.source, d.target)),
                      key=lambda x: x.protocol == "tcp")
        e = same[0] if same else edge(d.source, d.target, "tcp")
        e.denied += d.count
        e.denied_policy = d.policy
        e.denied_reason = d.reason

    return {"nodes": sorted(nodes.values(), key=lambda n: n["id"]),
            "edges": [e.as_dict() for e in sorted(edges.values(), key=lambda e: e.id)],
            "workloads": golden(edges, nodes, reading)}


def golden(edges: dict[str, EdgeStats], nodes: dict[str, dict[str, Any]],
           reading: Reading) -> list[dict[str, Any]]:
    """Per workload, what arrives at it: requests/s, success, p99, bytes/s, denied."""
    rows: dict[str, dict[str, Any]] = defaultdict(dict)
    for ref, n in nodes.items():
        if n["kind"] == "service":
            continue
        rows[ref] = {"workload": n["name"], "namespace": n["namespace"], "kind": n["kind"],
                     "rps": 0.0, "errors_rps": 0.0, "p99_ms": None, "bytes_per_s": 0.0,
                     "denied": 0, "spark": reading.spark.get(ref, [])}
    for e in edges.values():
        row = rows.get(e.target)
        if row is None:
            continue
        row["rps"] += e.rps
        row["errors_rps"] += e.errors_rps
        row["bytes_per_s"] += e.bytes_per_s
        row["denied"] += e.denied
        if e.p99_ms is not None:
            row["p99_ms"] = max(row["p99_ms"] or 0.0, e.p99_ms)
    for row in rows.values():
        row["success"] = None if row["rps"] <= 0 else 1.0 - row["errors_rps"] / row["rps"]
    return sorted(rows.values(), key=lambda r: (r["namespace"], r["workload"]))

"""Merging expositions and the traffic summary."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ambientctl.promtext import merge, traffic

LABELS = ('connection_security_policy="{sec}",destination_service="{svc}",'
          'destination_workload="{dw}",destination_workload_namespace="demo",'
          'reporter="{rep}",request_protocol="tcp",source_workload="{sw}",'
          'source_workload_namespace="{sns}"')


Flow = tuple[str, str, str, str, str, str, float]  # reporter, src, src ns, dst, svc, sec, n


def exposition(flows: list[Flow]) -> str:
    opened, sent = [], []
    for rep, sw, sns, dw, svc, sec, value in flows:
        labels = LABELS.format(rep=rep, sw=sw, sns=sns, dw=dw, svc=svc, sec=sec)
        opened.append(f"istio_tcp_connections_opened_total{{{labels}}} {value}")
        sent.append(f"istio_tcp_sent_bytes_total{{{labels}}} {value * 100}")
    return "\n".join([
        "# HELP istio_tcp_connections_opened_total TCP connections opened",
        "# TYPE istio_tcp_connections_opened_total counter", *opened,
        "# HELP istio_tcp_sent_bytes_total Bytes sent",
        "# TYPE istio_tcp_sent_bytes_total counter", *sent]) + "\n"


NODE1 = exposition([("source", "frontend-0", "demo", "inventory-0",
                     "inventory.demo.svc.cluster.local", "mutual_tls", 6)])
NODE2 = exposition([("destination", "frontend-0", "demo", "inventory-0", "unknown",
                     "mutual_tls", 5),
                    ("destination", "client", "legacy", "inventory-0", "unknown", "none", 2)])


def test_merge_keeps_every_sample_with_its_instance() -> None:
    text = merge([("node-1", NODE1), ("node-2", NODE2)])
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    opened = fams["istio_tcp_connections_opened"]
    assert opened.type == "counter"
    assert sorted((s.labels["instance"], s.value) for s in opened.samples) == [
        ("node-1", 6.0), ("node-2", 2.0), ("node-2", 5.0)]
    assert text.count("# TYPE istio_tcp_connections_opened_total counter") == 1


def test_traffic_prefers_the_destination_view_per_workload_pair() -> None:
    rows = traffic([NODE1, NODE2])
    assert [(r.source, r.destination, r.security, r.connections, r.reporter) for r in rows] == [
        ("demo/frontend-0", "demo/inventory-0", "mutual_tls", 5.0, "destination"),
        ("legacy/client", "demo/inventory-0", "none", 2.0, "destination"),
    ]
    assert rows[0].sent_bytes == 500.0

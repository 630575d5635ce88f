"""The dashboard's graph rules on captured-shape data: which reporter wins, how a
waypoint's hops are drawn, success and p99 as PromQL computes them, rates across a
counter reset, denials grouped by policy and old ones left out."""

from __future__ import annotations

import math

from ambientctl.dashboard import denials, graph, sources
from ambientctl.dashboard.sources import Reading, key

WP = "waypoint/demo/waypoint"


def http(code: str, src: str = "frontend-0", **extra: str) -> dict[str, str]:
    return {"reporter": "waypoint", "source_workload": src, "source_workload_namespace": "demo",
            "source_principal": "spiffe://cluster.local/ns/demo/sa/frontend",
            "destination_workload": "catalog-v1", "destination_workload_namespace": "demo",
            "destination_service": "catalog-v1.demo.svc.cluster.local",
            "connection_security_policy": "mutual_tls", "request_protocol": "http",
            "response_code": code, "instance": WP, **extra}


def tcp(reporter: str, src: str, src_ns: str, dst: str, security: str = "mutual_tls",
        service: str = "unknown") -> dict[str, str]:
    return {"reporter": reporter, "source_workload": src, "source_workload_namespace": src_ns,
            "source_principal": "unknown" if security == "none" else
            f"spiffe://cluster.local/ns/{src_ns}/sa/{src}",
            "destination_workload": dst, "destination_workload_namespace": "demo",
            "destination_service": service, "connection_security_policy": security,
            "instance": "node-1"}


def demo_reading() -> Reading:
    r = Reading("test")
    r.totals["istio_requests_total"] = {key(http("200")): 90.0, key(http("503")): 10.0}
    r.rates["istio_requests_total"] = {key(http("200")): 9.0, key(http("503")): 1.0}
    buckets = {"5": 5.0, "10": 9.0, "25": 10.0, "+Inf": 10.0}
    r.rates["istio_request_duration_milliseconds_bucket"] = {
        key({**http("200"), "le": le}): v for le, v in buckets.items()}
    to_wp = tcp("source", "frontend-0", "demo", "waypoint",
                service="catalog.demo.svc.cluster.local")
    plain = tcp("destination", "client", "legacy", "frontend-0", security="none")
    inv_src = tcp("source", "frontend-0", "demo", "inventory-0")
    inv_dst = tcp("destination", "frontend-0", "demo", "inventory-0")
    r.totals["istio_tcp_connections_opened_total"] = {
        key(to_wp): 40.0, key(plain): 20.0, key(inv_src): 20.0, key(inv_dst): 20.0,
        key(tcp("source", "waypoint", "demo", "catalog-v1-0")): 1.0}
    r.rates["istio_tcp_connections_opened_total"] = {
        key(to_wp): 4.0, key(plain): 2.0, key(inv_src): 2.0, key(inv_dst): 2.0}
    r.rates["istio_tcp_sent_bytes_total"] = {key(inv_dst): 100.0, key(inv_src): 999.0}
    return r


def edges_by_id(built: dict) -> dict[str, dict]:
    return {e["id"]: e for e in built["edges"]}


def test_waypoint_http_edge_has_rate_success_p99_lock_and_marker() -> None:
    built = graph.build(demo_reading(), ["demo/waypoint"], [])
    e = edges_by_id(built)["demo/frontend-0->svc:demo/catalog-v1:http"]
    assert e["rps"] == 10.0 and e["requests"] == 100.0
    assert math.isclose(e["success"], 0.9)          # 503s are failures, as in Istio
    assert e["mtls"] is True and e["waypoint"] == "demo/waypoint"
    assert e["source_principal"] == "spiffe://cluster.local/ns/demo/sa/frontend"
    # PromQL: rank 9.9 in bucket (10, 25] holding 9 -> 10: 10 + 15 * 0.9/1 = 23.5
    assert math.isclose(e["p99_ms"], 23.5)
    hop = edges_by_id(built)["svc:demo/catalog-v1->demo/catalog-v1:http"]
    assert hop["rps"] == 10.0 and math.isclose(hop["p99_ms"], 23.5)


def test_caller_hop_into_waypoint_goes_to_the_service_and_waypoint_hops_are_hidden() -> None:
    built = graph.build(demo_reading(), ["demo/waypoint"], [])
    ids = edges_by_id(built)
    e = ids["demo/frontend-0->svc:demo/catalog:tcp"]
    assert e["waypoint"] == "demo/waypoint" and e["mtls"] and e["rps"] == 4.0
    assert not [i for i in ids if i.startswith("demo/waypoint->") or "->demo/waypoint:" in i]
    kinds = {n["id"]: n["kind"] for n in built["nodes"]}
    assert kinds["demo/waypoint"] == "waypoint" and kinds["svc:demo/catalog"] == "service"


def test_tcp_prefers_destination_reporter_and_marks_plaintext() -> None:
    ids = edges_by_id(graph.build(demo_reading(), ["demo/waypoint"], []))
    inv = ids["demo/frontend-0->demo/inventory-0:tcp"]
    assert inv["rps"] == 2.0 and inv["bytes_per_s"] == 100.0  # not the source's 999
    plain = ids["legacy/client->demo/frontend-0:tcp"]
    assert plain["mtls"] is False and plain["rps"] == 2.0


def test_denial_marks_edge_with_policy_and_counts_in_table() -> None:
    d = graph.Denial("legacy/client", "demo/inventory-0", "demo/inventory-frontend-only",
                     "RBAC: access denied", 3, 0.0)
    built = graph.build(demo_reading(), ["demo/waypoint"], [d])
    e = edges_by_id(built)["legacy/client->demo/inventory-0:tcp"]
    assert e["denied"] == 3 and e["denied_policy"] == "demo/inventory-frontend-only"
    row = next(w for w in built["workloads"] if w["workload"] == "inventory-0")
    assert row["denied"] == 3 and row["rps"] == 2.0


def test_histogram_quantile_edges() -> None:
    assert graph.histogram_quantile(0.99, {}) is None
    assert graph.histogram_quantile(0.99, {1.0: 0.0, math.inf: 0.0}) is None
    # Everything beyond the last finite bucket: PromQL answers that bucket's bound.
    assert graph.histogram_quantile(0.99, {1.0: 0.0, 5.0: 0.0, math.inf: 3.0}) == 5.0
    assert graph.histogram_quantile(0.5, {10.0: 4.0, math.inf: 4.0}) == 5.0


def test_rates_handle_counter_reset() -> None:
    k = key({"reporter": "destination"})
    old = sources._Snapshot(0.0, {"istio_requests_total": {k: 100.0}})
    new = sources._Snapshot(10.0, {"istio_requests_total": {k: 30.0}})
    assert sources.rates_between(old, new)["istio_requests_total"][k] == 3.0
    grown = sources._Snapshot(10.0, {"istio_requests_total": {k: 150.0}})
    assert sources.rates_between(old, grown)["istio_requests_total"][k] == 5.0


def test_denials_grouped_by_policy_named_by_source_address_and_old_ones_dropped() -> None:
    now = 10_000.0
    line = ('{"log":"access","source_address":"10.0.0.4","destination_workload":'
            '"demo/inventory-0","outcome":"denied","reason":"RBAC","policy":"demo/p",'
            '"started":%s}')
    lines = [line % (now - 5), line % (now - 1), line % (now - 5000),
             '{"log":"access","outcome":"ok","started":1}', "not json \"denied\""]
    found = denials.summarize(denials.denied_records(lines),
                              {"10.0.0.4": "legacy/client"}.get, now=now)  # type: ignore[arg-type]
    assert found == [graph.Denial("legacy/client", "demo/inventory-0", "demo/p", "RBAC", 2,
                                  now - 1)]


def test_http_bytes_count_on_both_hops_through_the_service() -> None:
    r = demo_reading()
    r.rates["istio_response_bytes_total"] = {key(http("200")): 300.0}
    ids = edges_by_id(graph.build(r, ["demo/waypoint"], []))
    assert ids["demo/frontend-0->svc:demo/catalog-v1:http"]["bytes_per_s"] == 300.0
    assert ids["svc:demo/catalog-v1->demo/catalog-v1:http"]["bytes_per_s"] == 300.0


def test_waypoint_rbac_denial_names_policy_service_and_caller() -> None:
    line = ('{"start_time":"2026-12-04T19:55:05.686+00:00","method":"DELETE","path":"/items",'
            '"response_code":403,"response_flags":"RBAC","source_principal":'
            '"spiffe://cluster.local/ns/demo/sa/frontend","destination_service":'
            '"catalog.demo.svc.cluster.local","reason":"RBAC: access denied by DENY policy '
            'demo/catalog-no-delete"}')
    ok = line.replace('"RBAC"', '"-"').replace("403", "200")
    records = denials.denied_records([line, ok])
    assert len(records) == 1
    who = {"spiffe://cluster.local/ns/demo/sa/frontend": "demo/frontend"}.get
    found = denials.summarize(records, who, now=records[0]["started"] + 1)  # type: ignore[arg-type]
    assert [(d.source, d.target, d.policy, d.count) for d in found] == [
        ("demo/frontend", "svc:demo/catalog", "demo/catalog-no-delete", 1)]


def test_request_refused_at_the_waypoint_ends_at_the_service_and_carries_the_denial() -> None:
    r = demo_reading()
    refused = http("403", destination_workload="unknown",
                   destination_service="catalog.demo.svc.cluster.local")
    r.totals["istio_requests_total"][key(refused)] = 2.0
    d = graph.Denial("demo/frontend-0", "svc:demo/catalog", "demo/catalog-no-delete",
                     "RBAC", 2, 0.0)
    built = graph.build(r, ["demo/waypoint"], [d])
    ids = edges_by_id(built)
    assert "demo/unknown" not in {n["id"] for n in built["nodes"]}
    assert not [i for i in ids if i.startswith("svc:demo/catalog->")]
    assert ids["demo/frontend-0->svc:demo/catalog:http"]["denied"] == 2
    assert ids["demo/frontend-0->svc:demo/catalog:tcp"]["denied"] == 0

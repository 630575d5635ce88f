"""`ambientctl up --observability`: Debian's real Prometheus scrapes the demo mesh
(controller, both node agents, the waypoint, through the scrape gateway), and the
standard queries of Istio's dashboards return the demo's traffic. `ambientctl down`
stops Prometheus and its gateway and removes their data.

The demo traffic is sent twice: a series Prometheus first sees after a burst has no
earlier sample to take a rate from, so the second burst is what the [1m] rates
measure."""

from __future__ import annotations

import json
import math
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ambientctl.layout import MeshLayout
from ambientctl.processes import ProcessRecord, is_alive
from ambientctl.traces import find
from tests.e2e.observability_support import DemoMesh, dashboard, demo_mesh, get_json, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

BY_SERVICE = ('sum(rate(istio_requests_total{reporter="waypoint"}[1m])) '
              'by (destination_service)')
BY_CODE = 'sum(rate(istio_requests_total{reporter="waypoint"}[1m])) by (response_code)'
SUCCESS = ('sum(rate(istio_requests_total{reporter="waypoint",response_code!~"5.."}[1m])) / '
           'sum(rate(istio_requests_total{reporter="waypoint"}[1m]))')
P99 = ('histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket'
       '{reporter="waypoint"}[1m])) by (le, destination_workload))')
TCP_BYTES = ('sum(istio_tcp_sent_bytes_total{reporter="destination"}) by (source_workload, '
             'source_workload_namespace, destination_workload, connection_security_policy)')


def query(mesh: DemoMesh, promql: str) -> list[dict[str, Any]]:
    body = get_json(mesh.prometheus + "/api/v1/query", {"query": promql})
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def values(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


@pytest.fixture(scope="module")
def mesh() -> Iterator[DemoMesh]:
    with demo_mesh(observability=True) as m:
        assert f"Prometheus on {m.prometheus}" in m.up_output, m.up_output
        m.traffic()
        wait_for("Prometheus to store the waypoint's series",
                 lambda: query(m, 'istio_requests_total{reporter="waypoint"}'))
        m.traffic()
        wait_for("non-zero request rates", lambda: [
            r for r in query(m, BY_SERVICE) if float(r["value"][1]) > 0])
        yield m


def test_every_component_is_a_healthy_target(mesh: DemoMesh) -> None:
    active = get_json(mesh.prometheus + "/api/v1/targets")["data"]["activeTargets"]
    health = {t["labels"]["instance"]: t["health"] for t in active}
    assert health == {"controller": "up", "node-1": "up", "node-2": "up",
                      "waypoint/demo/waypoint": "up"}, active


def test_requests_by_destination_service(mesh: DemoMesh) -> None:
    by_service = values(query(mesh, BY_SERVICE), "destination_service")
    catalog = {s: v for s, v in by_service.items() if s.startswith("catalog")}
    assert set(catalog) >= {"catalog-v1.demo.svc.cluster.local"}, by_service
    assert sum(catalog.values()) > 0.05  # 20 requests in the last minute: ~0.3/s
    assert "unknown" not in by_service and "" not in by_service


def test_success_rate_by_response_code(mesh: DemoMesh) -> None:
    codes = values(query(mesh, BY_CODE), "response_code")
    assert codes.get("200", 0) > 0, codes
    ratio = query(mesh, SUCCESS)
    assert len(ratio) == 1 and 0.99 <= float(ratio[0]["value"][1]) <= 1.0, ratio


def test_p99_latency_from_the_histogram(mesh: DemoMesh) -> None:
    p99 = values(query(mesh, P99), "destination_workload")
    assert "catalog-v1" in p99, p99
    finite = [v for v in p99.values() if not math.isnan(v)]
    assert finite and all(0 < v < 5000 for v in finite), p99  # ms, loopback demo


def test_tcp_bytes_by_source_and_destination_workload(mesh: DemoMesh) -> None:
    rows = {(r["metric"]["source_workload_namespace"], r["metric"]["source_workload"],
             r["metric"]["destination_workload"], r["metric"]["connection_security_policy"]):
            float(r["value"][1]) for r in query(mesh, TCP_BYTES)}
    assert rows.get(("demo", "frontend", "inventory", "mutual_tls"), 0) > 0, rows
    assert rows.get(("legacy", "client", "frontend", "none"), 0) > 0, rows
    mesh_sources = [k for k in rows if k[3] == "mutual_tls"]
    assert mesh_sources and all("unknown" not in k for k in mesh_sources), rows


def test_dashboard_reads_this_prometheus(mesh: DemoMesh) -> None:
    with dashboard(mesh) as d:
        state = wait_for("a dashboard state", lambda: d.state().get("graph") and d.state())
        assert state["source"] == f"Prometheus {mesh.prometheus}", state["problems"]
        edges = {e["id"]: e for e in state["graph"]["edges"]}
        e = edges["demo/frontend->svc:demo/catalog-v1:http"]
        assert e["rps"] > 0 and e["mtls"] and e["waypoint"] == "demo/waypoint"
        assert e["p99_ms"] is not None and e["p99_ms"] > 0


def gateway_url(mesh: DemoMesh) -> str:
    settings = json.loads((Path("/run/ambientmesh") / mesh.cluster / "mesh.json").read_text())
    return f"http://127.0.0.1:{settings['extra']['metricsGateway']}"


def test_prometheus_and_gateway_listen_on_loopback_only(mesh: DemoMesh) -> None:
    for url in (mesh.prometheus, gateway_url(mesh)):
        port = url.rsplit(":", 1)[1]
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                             text=True)
        assert [line.split()[3] for line in out.stdout.splitlines()] == [f"127.0.0.1:{port}"]


def test_gateway_reaches_only_this_meshs_proxies(mesh: DemoMesh) -> None:
    gateway = gateway_url(mesh)
    assert "istio_requests_total" in urllib.request.urlopen(
        f"{gateway}/scrape/waypoint/demo/waypoint", timeout=5).read().decode()
    # A pod that is not a waypoint (its :15020 is just an app port), a node of no mesh.
    for path in ("/scrape/waypoint/legacy/client", "/scrape/waypoint/demo/frontend-0",
                 "/scrape/node/node-9"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(gateway + path, timeout=5)
        assert refused.value.code == 404, path
    log = (Path("/run/ambientmesh") / mesh.cluster / "logs" / "metrics-gateway.log").read_text()
    assert "scrape refused" in log and "legacy/client is not a waypoint" in log


def test_down_stops_prometheus_and_removes_its_data(mesh: DemoMesh) -> None:
    base = Path("/run/ambientmesh") / mesh.cluster
    records = [ProcessRecord(**json.loads((base / "pids" / f"{c}.json").read_text()))
               for c in ("prometheus", "metrics-gateway")]
    assert all(is_alive(r) for r in records)
    assert (base / "prometheus" / "data").is_dir()
    # Found by the state directory on their command line too: a crashed `up` that
    # lost their pid files still has them removed by `down`.
    assert {r.pid for r in records} <= set(find(MeshLayout(mesh.cluster)).processes)
    out = mesh.ctl("down")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not any(is_alive(r) for r in records)
    assert not base.exists()
    with pytest.raises(OSError):
        get_json(mesh.prometheus + "/-/ready", timeout=2)

"""Spans exported over OTLP/HTTP to a real (loopback) collector endpoint, and the
JSON access log, from the waypoint process."""

from __future__ import annotations

import json
import secrets
import time
from functools import partial
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from ambientctl.agents import Endpoint, get_text
from ambientctl.layout import AGENT_PORT
from tests.e2e.mesh_harness import local_mesh, metric_sum, wait_for
from tests.e2e.test_waypoint_mesh import CONFIG as WAYPOINT_MESH
from tests.e2e.waypoint_helpers import (
    Backend,
    BackendLoop,
    answer_name,
    host,
    run_waypoint,
    service,
    waypoint_snapshot,
)
from tests.topologies import pod

pytestmark = pytest.mark.e2e


def test_spans_reach_the_collector_and_every_request_is_logged(tmp_path: Path) -> None:
    loop = BackendLoop()
    received: list[dict[str, object]] = []

    async def collector(b: Backend, request: web.Request) -> web.Response:
        assert request.path == "/v1/traces"
        assert request.content_type == "application/json"
        received.append(await request.json())
        return web.json_response({})

    try:
        app = loop.add(Backend("app"), answer_name)
        otel = loop.add(Backend("otel"), collector)
        snap = waypoint_snapshot([service("app", 80, [app.port])], [], [], [], [])
        with run_waypoint(snap, tmp_path, ["--otlp-endpoint",
                                           f"http://127.0.0.1:{otel.port}"]) as wp:
            tid = "0af7651916cd43dd8448eb211c80319c"
            with httpx.Client(base_url=wp.url, headers={"host": host("app")}) as c:
                for i in range(5):
                    c.get(f"/r{i}", headers={
                        "traceparent": f"00-{tid}-b7ad6b7169203331-01",
                        "x-request-id": f"obs-{i}"})
            deadline = time.monotonic() + 5
            while not received and time.monotonic() < deadline:
                time.sleep(0.05)
            records = [r for r in wp.access_records() if str(r["request_id"]).startswith("obs-")]
    finally:
        loop.close()
    spans = [s for doc in received for rs in doc["resourceSpans"]  # type: ignore[attr-defined]
             for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert len(spans) == 5
    assert {s["traceId"] for s in spans} == {tid}
    assert {s["parentSpanId"] for s in spans} == {"b7ad6b7169203331"}
    assert len({s["spanId"] for s in spans}) == 5
    paths = {a["value"]["stringValue"] for s in spans for a in s["attributes"]
             if a["key"] == "url.path"}
    assert paths == {f"/r{i}" for i in range(5)}
    assert [r["path"] for r in records] == [f"/r{i}" for i in range(5)]
    for r in records:
        assert r["response_code"] == 200 and r["trace_id"] == tid
        assert r["upstream_host"] == f"127.0.0.1:{app.port}" and r["attempts"] == 1
        assert json.dumps(r)  # one JSON object per line


# The mesh of test_waypoint_mesh (namespace shop, Service catalog bound to its waypoint)
# and two more callers on one node, each with its own identity and so its own tunnel:
# one named by its deployment label, one by its pod name.
SOURCE_CONFIG = "\n---\n".join([
    WAYPOINT_MESH,
    pod("buyer", "shop", "node-1", ["sleep", "infinity"], "buyer",
        "ambientmesh.io/deployment: buyer-deploy, app: storefront"),
    pod("auditor", "shop", "node-1", ["sleep", "infinity"], "auditor"),
])


@pytest.mark.netns
def test_waypoint_labels_the_mesh_caller_by_its_workload() -> None:
    """istio_requests_total from the waypoint names each mesh client as Istio does:
    the workload at the tunnel's source address, proven by its certificate (the old
    waypoint wrote source_workload="unknown" for every caller)."""
    with local_mesh("amt" + secrets.token_hex(2)) as mesh:
        mesh.apply(SOURCE_CONFIG)
        callers = {name: mesh.pod("shop", name, enrolled=True) for name in ("buyer", "auditor")}
        waypoint = mesh.pod("shop", "waypoint")
        for backend in ("v1", "v2"):
            mesh.pod("shop", backend, enrolled=True)

        def answered(caller: str) -> bool:
            out = mesh.exec(callers[caller], ["curl", "-sS", "-m", "5", "-H", "x-version: v2",
                                              "http://catalog.shop/"])
            return out.returncode == 0 and out.stdout.strip() == "hello from v2"

        for caller in callers:
            wait_for(f"{caller} through the waypoint", partial(answered, caller), timeout=40)
            for _ in range(3):
                assert answered(caller)
        metrics = get_text(Endpoint(waypoint.netns, str(waypoint.ip), AGENT_PORT), "/metrics")
    ok = [line for line in metrics.splitlines()
          if line.startswith("istio_requests_total{") and 'response_code="200"' in line]
    assert ok, metrics
    expected = {
        "buyer": ('source_workload="buyer-deploy"', 'source_app="storefront"'),
        "auditor": ('source_workload="auditor"', 'source_app="unknown"'),
    }
    for caller, (workload, app) in expected.items():
        principal = f'source_principal="spiffe://cluster.local/ns/shop/sa/{caller}"'
        (line,) = [x for x in ok if principal in x]
        assert workload in line and app in line, line
        assert 'source_workload_namespace="shop"' in line, line
        assert 'destination_workload="catalog"' in line and 'destination_app="catalog"' in line
        assert 'connection_security_policy="mutual_tls"' in line, line
        assert metric_sum(metrics, "istio_requests_total", response_code="200",
                          source_principal=principal.split('"')[1]) >= 4
    assert not any('source_workload="unknown"' in x for x in ok), ok

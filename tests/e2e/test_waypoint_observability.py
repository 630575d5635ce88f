"""Spans exported over OTLP/HTTP to a real (loopback) collector endpoint, and the
JSON access log, from the waypoint process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from tests.e2e.waypoint_helpers import (
    Backend,
    BackendLoop,
    answer_name,
    host,
    run_waypoint,
    service,
    waypoint_snapshot,
)

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

"""The waypoint process in front of real backends, driven by real clients (httpx,
aiohttp, curl): canary weights, header routing, retries and the retry budget,
timeouts, outlier ejection, mirroring, rate limits, L7 authorization, connection
limits, faults, HTTP/1.1 details (keep-alive, chunked, 100-continue, WebSocket),
tracing headers, metrics and access logs."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import pytest

from mesh.api import config_pb2 as pb
from tests.e2e.waypoint_helpers import (
    Backend,
    BackendLoop,
    Waypoint,
    answer_name,
    backend,
    echo,
    fail_every,
    host,
    http_count,
    route,
    run_waypoint,
    service,
    sleeping,
    status_500,
    waypoint_snapshot,
    websocket_echo,
)

pytestmark = pytest.mark.e2e


@dataclass
class Mesh:
    wp: Waypoint
    b: dict[str, Backend]


def _rule(backends: list[pb.BackendRef], **kw: object) -> pb.RouteRule:
    return pb.RouteRule(backends=backends, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    loop = BackendLoop()
    try:
        b = {
            "v1": loop.add(Backend("v1"), answer_name),
            "v2": loop.add(Backend("v2"), answer_name),
            "flaky": loop.add(Backend("flaky"), fail_every(3)),
            "dead": loop.add(Backend("dead"), fail_every(1)),
            "slow": loop.add(Backend("slow"), sleeping(2.0)),
            "good": loop.add(Backend("good"), answer_name),
            "bad": loop.add(Backend("bad"), status_500),
            "primary": loop.add(Backend("primary"), echo),
            "shadow": loop.add(Backend("shadow"), echo),
            "echo": loop.add(Backend("echo"), echo),
            "ws": loop.add(Backend("ws"), websocket_echo),
            "busy": loop.add(Backend("busy"), sleeping(0.5)),
        }
        P = 80
        served = [
            service("canary", P, [b["v1"].port]),
            service("flaky", P, [b["flaky"].port]),
            service("dead", P, [b["dead"].port]),
            service("slow", P, [b["slow"].port]),
            service("ejecting", P, [b["good"].port, b["bad"].port]),
            service("mirrored", P, [b["primary"].port]),
            service("limited", P, [b["echo"].port]),
            service("guarded", P, [b["echo"].port]),
            service("echo", P, [b["echo"].port]),
            service("ws", P, [b["ws"].port]),
            service("busy", P, [b["busy"].port]),
            service("faulty", P, [b["echo"].port]),
        ]
        others = [service("v1", P, [b["v1"].port]), service("v2", P, [b["v2"].port]),
                  service("shadow", P, [b["shadow"].port])]
        retry = pb.RetryPolicy(attempts=2, codes=[503], backoff_ms=5)
        routes = [
            route("canary", "canary", [
                _rule([backend("v2")], matches=[pb.RouteMatch(headers=[pb.HeaderMatch(
                    name="x-version", match=pb.StringMatch(type=pb.StringMatch.EXACT,
                                                           value="v2"))])]),
                _rule([backend("v1", 90), backend("v2", 10)]),
            ]),
            route("flaky", "flaky", [_rule([backend("flaky")], retry=retry)]),
            route("dead", "dead", [_rule([backend("dead")], retry=pb.RetryPolicy(
                attempts=3, codes=[503], backoff_ms=1))]),
            route("slow", "slow", [_rule([backend("slow")], timeout_ms=200)]),
            route("mirrored", "mirrored", [_rule(
                [backend("mirrored")], mirrors=[pb.Mirror(backend=backend("shadow"),
                                                          percent=100)])]),
            route("echo", "echo", [
                _rule([backend("echo")], matches=[pb.RouteMatch(path=pb.StringMatch(
                    type=pb.StringMatch.PREFIX, value="/api"))],
                    request_headers=pb.HeaderModifier(
                        set=[pb.HeaderValue(name="x-route", value="api")],
                        remove=["x-drop-me"]),
                    response_headers=pb.HeaderModifier(
                        add=[pb.HeaderValue(name="x-waypoint", value="yes")])),
                _rule([backend("echo")], matches=[pb.RouteMatch(path=pb.StringMatch(
                    type=pb.StringMatch.REGEX, value=r"/items/\d+"), method="DELETE")]),
                _rule([backend("echo")], matches=[pb.RouteMatch(path=pb.StringMatch(
                    type=pb.StringMatch.EXACT, value="/"))]),
                _rule([backend("echo")], matches=[pb.RouteMatch(path=pb.StringMatch(
                    type=pb.StringMatch.PREFIX, value="/stream"))]),
                _rule([backend("echo")], matches=[pb.RouteMatch(
                    path=pb.StringMatch(type=pb.StringMatch.PREFIX, value="/q"),
                    query_params=[pb.HeaderMatch(name="debug", match=pb.StringMatch(
                        value="1"))])]),
            ]),
        ]
        traffic = [
            pb.TrafficPolicy(namespace="default", name="flaky-budget",
                             services=["default/flaky"],
                             retry_budget=pb.RetryBudget(percent=50, min_retries_per_second=50)),
            pb.TrafficPolicy(namespace="default", name="dead-budget", services=["default/dead"],
                             retry_budget=pb.RetryBudget(percent=20, min_retries_per_second=5)),
            pb.TrafficPolicy(namespace="default", name="eject", services=["default/ejecting"],
                             outlier_detection=pb.OutlierDetection(
                                 consecutive_5xx=3, interval_ms=100,
                                 base_ejection_time_ms=1000, max_ejection_percent=50)),
            pb.TrafficPolicy(namespace="default", name="rl", services=["default/limited"],
                             rate_limit=pb.RateLimit(requests_per_unit=50, unit_seconds=1,
                                                     burst=50)),
            pb.TrafficPolicy(namespace="default", name="cb", services=["default/busy"],
                             connection_pool=pb.ConnectionPool(max_connections=1,
                                                               max_pending_requests=1)),
            pb.TrafficPolicy(namespace="default", name="faults", services=["default/faulty"],
                             fault_injection=pb.FaultInjection(
                                 abort_percent=50, abort_status=418)),
        ]
        authz = [pb.Authorization(
            namespace="default", name="deny-admin", action=pb.DENY,
            targets=[pb.PolicyTarget(kind="Service", namespace="default", name="guarded")],
            rules=[pb.Rule(operations=[pb.Operation(methods=["POST"], paths=["/admin*"])])])]
        snap = waypoint_snapshot(served, others, routes, traffic, authz)
        with run_waypoint(snap, tmp_path_factory.mktemp("wp")) as wp:
            yield Mesh(wp, b)
    finally:
        loop.close()


async def _many(url: str, svc: str, n: int, concurrency: int = 16,
                headers: dict[str, str] | None = None, path: str = "/") -> list[httpx.Response]:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
        async def one() -> httpx.Response:
            async with sem:
                return await client.get(path, headers={"host": host(svc), **(headers or {})})
        return list(await asyncio.gather(*(one() for _ in range(n))))


def test_canary_90_10_over_4000_requests(mesh: Mesh) -> None:
    counts = http_count(mesh.wp.url + "/", host("canary"), 4000, 16)
    assert sum(counts.values()) == 4000
    assert set(counts) == {"200 v1", "200 v2"}, counts
    share = counts["200 v2"] / 4000
    assert abs(share - 0.10) <= 0.02, counts


def test_header_match_sends_all_to_v2(mesh: Mesh) -> None:
    counts = http_count(mesh.wp.url + "/", host("canary"), 500, 8, header="x-version: v2")
    assert counts == {"200 v2": 500}


def test_retries_hide_a_backend_failing_one_in_three(mesh: Mesh) -> None:
    before = sum(mesh.b["flaky"].hits.values())
    # One client in sequence, so "every third request fails" is exact: 333 failures.
    counts = http_count(mesh.wp.url + "/", host("flaky"), 1000, 1)
    assert counts == {"200 flaky": 1000}  # 0 client errors
    backend_calls = sum(mesh.b["flaky"].hits.values()) - before
    assert 1400 <= backend_calls <= 1600  # ~1.5 tries per request: failures were retried


def test_retry_budget_caps_retries_when_everything_fails(mesh: Mesh) -> None:
    before = sum(mesh.b["dead"].hits.values())
    t0 = time.monotonic()
    counts = http_count(mesh.wp.url + "/", host("dead"), 600, 8)
    elapsed = time.monotonic() - t0
    assert counts == {"503 unavailable": 600}
    retries = sum(mesh.b["dead"].hits.values()) - before - 600
    # No budget: 3 retries each = 1800. Budget: 20 % of requests + 5/s x 10 s.
    assert retries <= 600 * 0.20 + 5 * 10 + 1, (retries, elapsed)
    assert retries >= 100  # the budget was used, not disabled
    assert "ambient_waypoint_retry_budget_exhausted_total" in mesh.wp.metrics()


def test_request_timeout_returns_504_fast(mesh: Mesh) -> None:
    with httpx.Client(base_url=mesh.wp.url, timeout=5) as c:
        c.get("/", headers={"host": host("echo")})  # connection open and warm
        t0 = time.monotonic()
        r = c.get("/", headers={"host": host("slow"), "x-request-id": "slow-1"})
        elapsed = time.monotonic() - t0
    assert r.status_code == 504
    assert "timeout" in r.text
    assert 0.2 <= elapsed < 0.3, elapsed
    record = next(x for x in mesh.wp.access_records() if x["request_id"] == "slow-1")
    assert record["response_flags"] == "UT" and 200 <= float(str(record["duration_ms"])) < 300


def test_outlier_ejection_and_return(mesh: Mesh) -> None:
    good, bad = mesh.b["good"], mesh.b["bad"]
    with httpx.Client(base_url=mesh.wp.url, headers={"host": host("ejecting")}) as c:
        first = [c.get("/").status_code for _ in range(12)]
        bad_hits = sum(bad.hits.values())
        assert first.count(500) == 3  # three consecutive errors of "bad", then ejected
        during = [c.get("/").status_code for _ in range(40)]
        assert during == [200] * 40
        assert sum(bad.hits.values()) == bad_hits  # no traffic while ejected
        time.sleep(1.25)  # base ejection 1 s, sweep every 100 ms
        after = [c.get("/").text for _ in range(6)]
        assert "bad" in after  # back in rotation
    assert sum(good.hits.values()) >= 40


def test_mirror_copies_to_shadow_but_answers_from_primary(mesh: Mesh) -> None:
    shadow = mesh.b["shadow"]
    before = len(shadow.requests)
    with httpx.Client(base_url=mesh.wp.url, headers={"host": host("mirrored")}) as c:
        bodies = [c.post("/m", content=f"payload-{i}".encode()).json() for i in range(20)]
    assert {b["backend"] for b in bodies} == {"primary"}
    deadline = time.monotonic() + 3
    while len(shadow.requests) - before < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    copies = shadow.requests[before:]
    assert len(copies) == 20
    assert {c["body"] for c in copies} == {f"payload-{i}" for i in range(20)}
    assert all(str(c["headers"]["host"]).endswith("-shadow") for c in copies)  # type: ignore[index]


def test_rate_limit_50_rps_answers_429_above(mesh: Mesh) -> None:
    async def paced() -> list[int]:
        async with httpx.AsyncClient(base_url=mesh.wp.url, timeout=5) as client:
            codes: list[int] = []
            t0 = time.monotonic()
            for i in range(300):  # 150 rps for 2 s
                await asyncio.sleep(max(0.0, t0 + i / 150 - time.monotonic()))
                r = await client.get("/", headers={"host": host("limited")})
                codes.append(r.status_code)
                if r.status_code == 429:
                    assert r.headers["x-ambient-ratelimited"] == "true"
            return codes
    codes = asyncio.run(paced())
    ok = codes.count(200)
    assert set(codes) == {200, 429}
    assert 130 <= ok <= 170, ok  # 50 burst + 50/s x 2 s


def test_l7_deny_post_admin_but_get_passes(mesh: Mesh) -> None:
    with httpx.Client(base_url=mesh.wp.url, headers={"host": host("guarded")}) as c:
        denied = c.post("/admin", content=b"x")
        assert denied.status_code == 403
        assert "deny-admin" in denied.text
        assert c.post("/admin/users").status_code == 403
        assert c.get("/admin").status_code == 200
        assert c.post("/public").status_code == 200


def test_connection_limit_overflow_is_503_with_header(mesh: Mesh) -> None:
    responses = asyncio.run(_many(mesh.wp.url, "busy", 6, 6))
    codes = Counter(r.status_code for r in responses)
    assert codes[200] >= 2 and codes[503] >= 1, codes
    overflow = [r for r in responses if r.status_code == 503]
    assert all(r.headers["x-ambient-overloaded"] == "maxPendingRequests" for r in overflow)


def test_fault_abort_by_percentage(mesh: Mesh) -> None:
    responses = asyncio.run(_many(mesh.wp.url, "faulty", 400, 16))
    aborted = sum(r.status_code == 418 for r in responses)
    assert 140 <= aborted <= 260, aborted
    assert {r.status_code for r in responses} <= {200, 418}
    assert any(r.text == "fault filter abort\n" for r in responses)


def test_routing_header_modifiers_and_matches(mesh: Mesh) -> None:
    with httpx.Client(base_url=mesh.wp.url, headers={"host": host("echo")}) as c:
        r = c.get("/api/x", headers={"x-drop-me": "1"})
        assert r.status_code == 200 and r.headers["x-waypoint"] == "yes"
        seen = r.json()["headers"]
        assert seen["x-route"] == "api" and "x-drop-me" not in seen
        assert c.delete("/items/42").status_code == 200
        assert c.get("/items/42").status_code == 404  # method does not match
        assert c.get("/apix").status_code == 404  # prefix is element-wise
        assert c.get("/q?debug=1").status_code == 200
        assert c.get("/q?debug=0").status_code == 404
        assert httpx.get(mesh.wp.url + "/", headers={"host": "nobody.example"}).status_code \
            == 404


def test_tracing_headers_started_and_continued(mesh: Mesh) -> None:
    tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with httpx.Client(base_url=mesh.wp.url, headers={"host": host("echo")}) as c:
        seen = c.get("/", headers={"traceparent": f"00-{tid}-{sid}-01",
                                   "x-request-id": "req-1"}).json()["headers"]
        assert seen["traceparent"].startswith(f"00-{tid}-") and sid not in seen["traceparent"]
        assert seen["x-b3-traceid"] == tid and seen["x-b3-parentspanid"] == sid
        assert seen["x-request-id"] == "req-1"
        fresh = c.get("/").json()["headers"]
        assert len(fresh["traceparent"]) == 55 and len(fresh["x-request-id"]) == 36
        b3 = c.get("/", headers={"b3": f"{tid}-{sid}-1"}).json()["headers"]
        assert b3["traceparent"].split("-")[1] == tid
    records = [r for r in mesh.wp.access_records() if r["request_id"] == "req-1"]
    assert records and records[0]["trace_id"] == tid and records[0]["response_code"] == 200


def test_chunked_bodies_both_ways_and_keep_alive(mesh: Mesh) -> None:
    def gen() -> Iterator[bytes]:
        for i in range(10):
            yield f"c{i}-".encode() * 100
    with httpx.Client(base_url=mesh.wp.url, headers={"host": host("echo")}) as c:
        r = c.post("/", content=gen())
        data = r.json()
        assert data["body"] == "".join(f"c{i}-" * 100 for i in range(10))
        assert data["chunked"] is True
        s = c.get("/stream")
        assert s.headers["transfer-encoding"] == "chunked"
        assert s.text == "part0;part1;part2;part3;part4;"
    wp_conns = [line for line in mesh.wp.access_records()]
    assert wp_conns


def test_expect_100_continue_with_curl(mesh: Mesh, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is needed (Debian package curl)"
    payload = tmp_path / "body"
    payload.write_bytes(b"z" * 200_000)
    out = subprocess.run(
        [curl, "-sS", "-v", "--http1.1", "-H", f"Host: {host('echo')}", "-H",
         "Expect: 100-continue", "--data-binary", f"@{payload}", f"{mesh.wp.url}/"],
        capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert "HTTP/1.1 100 Continue" in out.stderr
    assert '"body": "' + "z" * 10 in out.stdout
    denied = subprocess.run(
        [curl, "-sS", "-v", "--http1.1", "-H", f"Host: {host('guarded')}", "-H",
         "Expect: 100-continue", "--data-binary", f"@{payload}", f"{mesh.wp.url}/admin"],
        capture_output=True, text=True, timeout=20)
    assert "HTTP/1.1 403" in denied.stderr
    assert "100 Continue" not in denied.stderr  # denied before the body was asked for


def test_websocket_echo_through_upgrade(mesh: Mesh) -> None:
    async def talk() -> list[str | bytes]:
        async with aiohttp.ClientSession() as s, s.ws_connect(
                f"{mesh.wp.url}/ws", headers={"Host": host("ws")}) as ws:
            got: list[str | bytes] = []
            for text in ("hello", "again"):
                await ws.send_str(text)
                got.append((await ws.receive(timeout=5)).data)
            await ws.send_bytes(b"\x01\x02\x03")
            got.append((await ws.receive(timeout=5)).data)
            return got
    assert asyncio.run(talk()) == ["echo:hello", "echo:again", b"\x03\x02\x01"]


def test_metrics_carry_istio_labels(mesh: Mesh) -> None:
    httpx.get(mesh.wp.url + "/", headers={"host": host("guarded")})
    text = mesh.wp.metrics()
    line = next(x for x in text.splitlines() if x.startswith("istio_requests_total{")
                and 'destination_service="guarded.default.svc.cluster.local"' in x
                and 'response_code="200"' in x)
    for label in ('reporter="waypoint"', 'request_protocol="http"', "source_workload=",
                  "source_principal=", "destination_workload=", "destination_principal=",
                  "connection_security_policy="):
        assert label in line
    assert 'response_code="403"' in text
    assert "istio_request_duration_milliseconds_bucket{" in text

"""The waypoint's cheap telemetry paths say the same as the slow ones they replaced:
access-log JSON, Prometheus exposition, UUIDs, start times, hop-by-hop filtering."""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import asdict
from datetime import UTC, datetime

import anyio
from hypothesis import given
from hypothesis import strategies as st

from waypoint.accesslog import AccessLog, AccessRecord, WallClock
from waypoint.messages import HOP_BY_HOP, end_to_end
from waypoint.metrics import RequestLabels, WaypointMetrics
from waypoint.tracing import random_hex, random_uuid4

text = st.text(max_size=20)


@given(text, text, st.integers(0, 999), st.floats(0, 1e6, allow_nan=False), text)
def test_access_record_json_is_what_json_dumps_writes(path: str, agent: str, code: int,
                                                      ms: float, reason: str) -> None:
    rec = AccessRecord("t", "GET", path, "HTTP/1.1", code, "-", ms, 1, 2, "a", "id", "tr",
                       "p", "d", "u", "r", 1, agent, reason)
    assert rec.to_json() == json.dumps(asdict(rec), separators=(",", ":"))


def test_access_log_lines_of_one_loop_turn_are_written_together() -> None:
    sink = io.StringIO()
    log = AccessLog(sink)
    rec = AccessRecord("t", "GET", "/", "HTTP/1.1", 200, "-", 1.0, 0, 0, "a", "id", "", "",
                       "d", "", "r", 1, "")

    async def main() -> list[str]:
        log.write(rec)
        log.write(rec)
        seen = [sink.getvalue()]  # nothing yet: the flush runs at the end of the turn
        await anyio.sleep(0)
        await anyio.sleep(0)
        seen.append(sink.getvalue())
        return seen

    before, after = anyio.run(main)
    assert before == ""
    assert [json.loads(line)["path"] for line in after.splitlines()] == ["/", "/"]
    log.write(rec)  # no event loop: written at once
    assert len(sink.getvalue().splitlines()) == 3


def test_request_metrics_exposition() -> None:
    m = WaypointMetrics()
    labels = RequestLabels("client", "bench", "spiffe://x/ns/bench/sa/c", "curl", "server",
                           "bench", "unknown", "web", "web.bench.svc.cluster.local", "web",
                           "bench", "http", 200, "-", "mutual_tls")
    m.observe(labels, 3.0, 10, 20)
    m.observe(labels, 7.5, 0, 5)
    out = m.exposition().decode()
    line = next(x for x in out.splitlines() if x.startswith("istio_requests_total{"))
    assert line.endswith(" 2.0") and 'reporter="waypoint"' in line
    assert 'response_code="200"' in line and 'destination_service_name="web"' in line
    assert 'source_workload="client"' in line and 'source_app="curl"' in line
    buckets = {x.split('le="')[1].split('"')[0]: float(x.rsplit(" ", 1)[1])
               for x in out.splitlines()
               if x.startswith("istio_request_duration_milliseconds_bucket{")}
    assert buckets["1.0"] == 0 and buckets["5.0"] == 1 and buckets["10.0"] == 2
    assert buckets["+Inf"] == 2 and "3.6e+06" in buckets
    assert any(x.startswith("istio_request_duration_milliseconds_sum{") and
               x.endswith(" 10.5") for x in out.splitlines())
    assert any(x.startswith("istio_response_bytes_total{") and x.endswith(" 25.0")
               for x in out.splitlines())


def test_ids_are_well_formed() -> None:
    seen = set()
    for _ in range(500):
        u = random_uuid4()
        parsed = uuid.UUID(u)
        assert str(parsed) == u and parsed.version == 4 and parsed.variant == uuid.RFC_4122
        seen.add(u)
        assert len(random_hex(8)) == 16 and len(random_hex(16)) == 32
    assert len(seen) == 500


def test_wall_clock_matches_isoformat() -> None:
    clock = WallClock()
    for _ in range(3):
        ours = clock.now()
        theirs = datetime.now(UTC).isoformat(timespec="milliseconds")
        assert len(ours) == len(theirs) and ours.endswith("+00:00")
        gap = datetime.fromisoformat(theirs) - datetime.fromisoformat(ours)
        assert 0 <= gap.total_seconds() < 0.5


@given(st.lists(st.tuples(st.sampled_from([*sorted(HOP_BY_HOP), "x-a", "host", "te"]),
                          st.sampled_from(["trailers", "x-a", "close", "1"])), max_size=8),
       st.booleans())
def test_end_to_end_fast_path_agrees(headers: list[tuple[str, str]], keep_te: bool) -> None:
    """Without a Connection header the fast path drops exactly the standard set."""
    got = end_to_end(headers, keep_te)
    if keep_te or any(k == "connection" for k, _ in headers):
        return
    assert got == [(k, v) for k, v in headers if k not in HOP_BY_HOP]

"""Trace context: W3C and B3 parse, continue, start; x-request-id."""

from __future__ import annotations

from waypoint.messages import header
from waypoint.tracing import (
    ensure_request_id,
    extract,
    inject,
    parse_b3,
    parse_traceparent,
    start_span,
)

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
SID = "00f067aa0ba902b7"


def ids(n: int) -> str:
    return ("ab" * n)


def test_parse_valid_traceparent() -> None:
    ctx = parse_traceparent(f"00-{TID}-{SID}-01")
    assert ctx is not None and ctx.trace_id == TID and ctx.span_id == SID and ctx.sampled
    assert parse_traceparent(f"00-{TID}-{SID}-00").sampled is False  # type: ignore[union-attr]


def test_reject_invalid_traceparent() -> None:
    for bad in (f"ff-{TID}-{SID}-01", f"00-{'0' * 32}-{SID}-01", f"00-{TID}-{'0' * 16}-01",
                "00-xyz-abc-01", f"00-{TID[:-1]}-{SID}-01", ""):
        assert parse_traceparent(bad) is None


def test_b3_multi_and_single_and_64bit_ids() -> None:
    ctx = parse_b3([("x-b3-traceid", TID[16:]), ("x-b3-spanid", SID), ("x-b3-sampled", "0")])
    assert ctx is not None and ctx.trace_id == "0" * 16 + TID[16:] and not ctx.sampled
    ctx = parse_b3([("b3", f"{TID}-{SID}-1")])
    assert ctx is not None and ctx.trace_id == TID and ctx.sampled
    assert parse_b3([("b3", "0")]) is None
    assert parse_b3([("x-b3-traceid", TID)]) is None


def test_w3c_wins_over_b3() -> None:
    other = "1" * 32
    ctx = extract([("traceparent", f"00-{TID}-{SID}-01"), ("x-b3-traceid", other),
                   ("x-b3-spanid", SID)])
    assert ctx is not None and ctx.trace_id == TID
    ctx = extract([("traceparent", "garbage"), ("x-b3-traceid", other), ("x-b3-spanid", SID)])
    assert ctx is not None and ctx.trace_id == other


def test_continue_a_trace_as_a_child() -> None:
    h = [("traceparent", f"00-{TID}-{SID}-01"), ("tracestate", "vendor=1")]
    span = start_span(h, "web", 5, ids)
    assert span.context.trace_id == TID and span.parent_span_id == SID
    assert span.context.span_id == "ab" * 8
    inject(h, span)
    assert header(h, "traceparent") == f"00-{TID}-{'ab' * 8}-01"
    assert header(h, "tracestate") == "vendor=1"
    assert header(h, "x-b3-parentspanid") == SID
    assert header(h, "x-b3-traceid") == TID
    assert sum(1 for k, _ in h if k == "traceparent") == 1


def test_start_a_new_trace() -> None:
    h: list[tuple[str, str]] = []
    span = start_span(h, "web", 5, ids)
    assert span.parent_span_id is None and span.context.trace_id == "ab" * 16
    inject(h, span)
    assert header(h, "traceparent") == f"00-{'ab' * 16}-{'ab' * 8}-01"
    assert header(h, "x-b3-parentspanid") is None


def test_unsampled_stays_unsampled() -> None:
    h = [("traceparent", f"00-{TID}-{SID}-00")]
    inject(h, start_span(h, "x", 0, ids))
    assert header(h, "traceparent", ).endswith("-00")  # type: ignore[union-attr]
    assert header(h, "x-b3-sampled") == "0"


def test_request_id_kept_or_minted() -> None:
    h = [("x-request-id", "abc")]
    assert ensure_request_id(h) == "abc" and len(h) == 1
    h2: list[tuple[str, str]] = []
    rid = ensure_request_id(h2)
    assert len(rid) == 36 and header(h2, "x-request-id") == rid

"""Trace context (sans I/O): x-request-id, W3C traceparent/tracestate and B3
(single `b3` header and multi X-B3-*) parsed, continued or started, and written to
the upstream request. The waypoint makes one span per request: a child of the
caller's span, or the root of a new trace when the caller sent none.

Both formats are written upstream so that apps instrumented for either keep the
trace; W3C wins when a request carries both and they disagree."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from waypoint.messages import Headers, header

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_HEX = re.compile(r"^[0-9a-f]+$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
B3_HEADERS = ("x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled",
              "x-b3-flags", "b3")

IdSource = Callable[[int], str]  # nbytes -> lowercase hex


def random_hex(nbytes: int) -> str:
    """Trace and span ids need to be unique, not secret (as Envoy's, from a seeded
    PRNG): Python's Mersenne Twister, ~1 µs cheaper than a getrandom() call each."""
    return f"{random.getrandbits(nbytes * 8):0{nbytes * 2}x}"


def random_uuid4() -> str:
    """A random (version 4) UUID string, as str(uuid.uuid4()) but without building a
    UUID object or a system call: a few microseconds less on every request that comes
    without an x-request-id."""
    x = f"{random.getrandbits(128) & _UUID_CLEAR | _UUID_SET:032x}"
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)  # version, variant bits
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


class SpanContext(NamedTuple):
    trace_id: str  # 32 hex
    span_id: str  # 16 hex
    sampled: bool = True
    tracestate: str = ""


def parse_traceparent(value: str) -> SpanContext | None:
    m = _TRACEPARENT.match(value.strip().lower())
    if not m:
        return None
    version, trace_id, span_id, flags = m.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return SpanContext(trace_id, span_id, bool(int(flags, 16) & 1))


def _b3_trace_id(v: str) -> str | None:
    v = v.strip().lower()
    if len(v) not in (16, 32) or not _HEX.match(v):
        return None
    v = v.rjust(32, "0")  # 64-bit B3 ids are left-padded into 128-bit
    return None if v == _ZERO_TRACE else v


def _b3_span_id(v: str) -> str | None:
    v = v.strip().lower()
    if len(v) != 16 or not _HEX.match(v) or v == _ZERO_SPAN:
        return None
    return v


def _b3_sampled(v: str | None) -> bool:
    return v is None or v.strip().lower() in ("1", "true", "d")


def parse_b3(headers: Headers) -> SpanContext | None:
    single = header(headers, "b3")
    if single:
        parts = single.split("-")
        if len(parts) >= 2:
            tid, sid = _b3_trace_id(parts[0]), _b3_span_id(parts[1])
            if tid and sid:
                return SpanContext(tid, sid, _b3_sampled(parts[2] if len(parts) > 2 else None))
        return None
    tid_raw, sid_raw = header(headers, "x-b3-traceid"), header(headers, "x-b3-spanid")
    if not tid_raw or not sid_raw:
        return None
    tid, sid = _b3_trace_id(tid_raw), _b3_span_id(sid_raw)
    if not tid or not sid:
        return None
    flags = header(headers, "x-b3-flags")
    sampled = flags == "1" or _b3_sampled(header(headers, "x-b3-sampled"))
    return SpanContext(tid, sid, sampled)


def extract(headers: Headers) -> SpanContext | None:
    """The caller's span: W3C first, then B3."""
    tp = header(headers, "traceparent")
    if tp:
        ctx = parse_traceparent(tp)
        if ctx:
            ts = header(headers, "tracestate") or ""
            return SpanContext(ctx.trace_id, ctx.span_id, ctx.sampled, ts)
    return parse_b3(headers)


@dataclass(slots=True)
class Span:
    """One request through the waypoint. Times are Unix nanoseconds."""

    context: SpanContext
    parent_span_id: str | None
    name: str
    start_ns: int
    end_ns: int = 0
    attributes: dict[str, str | int] = field(default_factory=dict)
    error: bool = False


def start_span(headers: Headers, name: str, now_ns: int, ids: IdSource = random_hex) -> Span:
    parent = extract(headers)
    if parent is None:
        ctx = SpanContext(ids(16), ids(8), True)
        return Span(ctx, None, name, now_ns)
    ctx = SpanContext(parent.trace_id, ids(8), parent.sampled, parent.tracestate)
    return Span(ctx, parent.span_id, name, now_ns)


def inject(headers: Headers, span: Span) -> None:
    """Write the waypoint's span as the parent of whatever the backend does next."""
    ctx = span.context
    flags = "01" if ctx.sampled else "00"
    replaced = _REPLACED_WITH_STATE if ctx.tracestate else _REPLACED
    kept = [(k, v) for k, v in headers if k not in replaced]
    kept.append(("traceparent", f"00-{ctx.trace_id}-{ctx.span_id}-{flags}"))
    if ctx.tracestate:
        kept.append(("tracestate", ctx.tracestate))
    kept.append(("x-b3-traceid", ctx.trace_id))
    kept.append(("x-b3-spanid", ctx.span_id))
    if span.parent_span_id:
        kept.append(("x-b3-parentspanid", span.parent_span_id))
    kept.append(("x-b3-sampled", "1" if ctx.sampled else "0"))
    headers[:] = kept


_REPLACED = frozenset({"traceparent", *B3_HEADERS})
_REPLACED_WITH_STATE = _REPLACED | {"tracestate"}


def ensure_request_id(headers: Headers, make: Callable[[], str] | None = None) -> str:
    """Keep the caller's x-request-id (so logs join across hops) or mint one."""
    rid = header(headers, "x-request-id")
    if rid:
        return rid
    rid = make() if make else random_uuid4()
    headers.append(("x-request-id", rid))
    return rid

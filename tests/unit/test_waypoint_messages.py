"""Header helpers and the replayable request body behind retries and mirrors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from waypoint.messages import Headers, ReplayableBody, RequestHead, end_to_end
from waypoint.otlp import export_request
from waypoint.tracing import Span, SpanContext


class Chunks:
    def __init__(self, *chunks: bytes) -> None:
        self._chunks = chunks
        self.reads = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        for c in self._chunks:
            self.reads += 1
            yield c

    @property
    def trailers(self) -> Headers | None:
        return [("grpc-status", "0")]

    async def aclose(self) -> None:
        return None


async def collect(body: ReplayableBody) -> bytes:
    return b"".join([c async for c in body.attempt().chunks()])


def test_replay_sends_the_same_bytes_again_without_rereading() -> None:
    src = Chunks(b"ab", b"cd")
    body = ReplayableBody(src, limit=10)

    async def run() -> None:
        assert await collect(body) == b"abcd"
        assert await collect(body) == b"abcd"
    anyio.run(run)
    assert src.reads == 2 and body.content() == b"abcd" and body.replayable
    assert body.trailers == [("grpc-status", "0")]


def test_partial_first_attempt_continues_from_the_source() -> None:
    body = ReplayableBody(Chunks(b"a", b"b", b"c"), limit=10)

    async def run() -> None:
        it = body.attempt().chunks().__aiter__()
        assert await it.__anext__() == b"a"
        assert await collect(body) == b"abc"  # the retry replays "a", then reads on
    anyio.run(run)


def test_over_the_limit_is_not_replayable() -> None:
    body = ReplayableBody(Chunks(b"x" * 6, b"y" * 6), limit=10)

    async def run() -> None:
        assert await collect(body) == b"x" * 6 + b"y" * 6
        with pytest.raises(RuntimeError, match="cannot be sent twice"):
            await collect(body)
    anyio.run(run)
    assert not body.replayable and body.content() is None


def test_empty_body_is_complete_from_the_start() -> None:
    body = ReplayableBody(Chunks(), empty=True)
    assert body.content() == b""


def test_end_to_end_drops_hop_by_hop_and_connection_named() -> None:
    h = [("connection", "keep-alive, x-secret"), ("keep-alive", "5"), ("x-secret", "1"),
         ("te", "trailers, deflate"), ("transfer-encoding", "chunked"), ("x-ok", "1")]
    assert end_to_end(h) == [("x-ok", "1")]
    assert end_to_end(h, keep_te_trailers=True) == [("te", "trailers"), ("x-ok", "1")]


def test_request_head_views() -> None:
    head = RequestHead("POST", "/a/b?x=1&y=&x=2", "web", [
        ("content-type", "application/grpc+proto"), ("content-length", "12")])
    assert head.path == "/a/b" and head.query == [("x", "1"), ("y", ""), ("x", "2")]
    assert head.is_grpc and head.body_length == 12


def test_otlp_json_shape() -> None:
    span = Span(SpanContext("a" * 32, "b" * 16), "c" * 16, "web/x", 10, 20,
                {"http.response.status_code": 503, "url.path": "/x"}, error=True)
    doc = export_request([span], "wp.default")
    s = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert s["traceId"] == "a" * 32 and s["parentSpanId"] == "c" * 16
    assert s["startTimeUnixNano"] == "10" and s["status"] == {"code": 2}
    assert {"key": "http.response.status_code", "value": {"intValue": "503"}} in s["attributes"]
    assert doc["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"] \
        == "wp.default"

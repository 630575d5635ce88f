"""Bad input to the waypoint's HTTP/1.1 server side, through a real loopback socket:
random bytes, malformed heads, request smuggling (CL+TE and friends), oversized heads
and slowloris. The contract: every connection ends (no hang) with a well-formed answer
from {200, 400, 408, 431} or a plain close, the server never raises, and a smuggled
second request never reaches the handler."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from waypoint import server as waypoint_server
from waypoint.http1 import MAX_HEAD, DownstreamInfo, Http1ServerConnection
from waypoint.messages import BodySource, RequestHead, Response, local_response

# make soak (AMBIENT_SOAK=1) runs ten times the examples.
SCALE = 10 if os.environ.get("AMBIENT_SOAK") == "1" else 1

STATUS = re.compile(rb"^HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")
ALLOWED = {200, 400, 408, 431}
HEAD_TIMEOUT = 0.4
FUZZ = settings(max_examples=100 * SCALE, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Seen:
    targets: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


def handler_for(seen: Seen) -> Callable[[RequestHead, BodySource, DownstreamInfo],
                                        Awaitable[Response]]:
    async def handle(head: RequestHead, body: BodySource, info: DownstreamInfo) -> Response:
        seen.targets.append(head.target)
        size = 0
        if head.has_body:
            async for chunk in body.chunks():
                size += len(chunk)
        return local_response(200, f"{head.method} {head.target} {size}")
    return handle


async def exchange(payload: bytes | list[bytes], *, gap: float = 0.0, sniff: bool = False,
                   half_close: bool = True, limit: float = 5.0
                   ) -> tuple[bytes, Seen, float]:
    """Serve one connection in-process, send `payload` (pieces `gap` seconds apart),
    half-close (unless told not to), and read until the server closes.
    Returns (answer, seen, seconds)."""
    seen = Seen()
    handle = handler_for(seen)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve(stream: anyio.abc.SocketStream) -> None:
        try:
            async with stream:
                if sniff:
                    await waypoint_server.serve_stream(stream, handle, DownstreamInfo(peer="t"))
                else:
                    await Http1ServerConnection(stream, handle, DownstreamInfo(peer="t"),
                                                head_timeout=HEAD_TIMEOUT).serve()
        except BaseException as e:  # recorded: the test asserts there were none
            if not isinstance(e, anyio.get_cancelled_exc_class()):
                seen.errors.append(e)
            raise

    answer = bytearray()
    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        client = await anyio.connect_tcp("127.0.0.1", port)

        async def send_all() -> None:
            pieces = payload if isinstance(payload, list) else [payload]
            try:
                for piece in pieces:
                    await client.send(piece)
                    if gap:
                        await anyio.sleep(gap)
                if half_close:
                    await client.send_eof()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the server answered and closed while we were still sending

        with anyio.fail_after(limit):  # the "0 hangs" assertion
            async with anyio.create_task_group() as io:
                io.start_soon(send_all)
                try:  # read concurrently: an answer sent mid-upload is not lost
                    while True:
                        answer += await client.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    pass
                io.cancel_scope.cancel()
        took = time.monotonic() - start
        await client.aclose()
        tg.cancel_scope.cancel()
    await listener.aclose()
    return bytes(answer), seen, took


def run(payload: bytes | list[bytes], **kw: object) -> tuple[bytes, Seen, float]:
    return anyio.run(lambda: exchange(payload, **kw))  # type: ignore[arg-type]


def statuses(answer: bytes) -> list[int]:
    """Status codes of the responses in `answer`, checking each is well formed."""
    out = []
    rest = answer
    while rest:
        m = STATUS.match(rest)
        assert m, f"not an HTTP/1.1 response: {rest[:80]!r}"
        head, sep, body = rest.partition(b"\r\n\r\n")
        assert sep, f"response head not terminated: {rest[:80]!r}"
        length = re.search(rb"(?im)^content-length: (\d+)\r?$", head)
        assert length, f"response without content-length: {head!r}"
        n = int(length.group(1))
        out.append(int(m.group(1)))
        rest = body[n:]
    return out


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                max_size=40).map(str.strip)


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes_end_cleanly(data: bytes) -> None:
    answer, seen, _ = run(data)
    assert not seen.errors
    assert set(statuses(answer)) <= ALLOWED


@FUZZ
@given(prefix=st.sampled_from([b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.1\r\nHost: a\r\n",
                               b"GET /", b""]),
       mutation=st.binary(min_size=1, max_size=80),
       suffix=st.sampled_from([b"\r\n\r\n", b"\r\n", b""]))
def test_mutated_heads_end_cleanly(prefix: bytes, mutation: bytes, suffix: bytes) -> None:
    answer, seen, _ = run(prefix + mutation + suffix)
    assert not seen.errors
    assert set(statuses(answer)) <= ALLOWED


@FUZZ
@given(headers=st.lists(st.tuples(TOKEN, VALUE), max_size=12),
       body=st.binary(max_size=300), chunked=st.booleans())
def test_valid_requests_are_served_exactly(headers: list[tuple[str, str]], body: bytes,
                                           chunked: bool) -> None:
    lines = [f"{k}: {v}" for k, v in headers
             if k not in ("content-length", "transfer-encoding", "connection", "upgrade",
                          "expect", "host")]
    framing = ("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
    encoded = (b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if chunked and body
               else b"0\r\n\r\n" if chunked else body)
    raw = ("POST /echo HTTP/1.1\r\nHost: svc\r\n" + "".join(line + "\r\n" for line in lines)
           + framing + "\r\nConnection: close\r\n\r\n").encode("latin-1") + encoded
    answer, seen, _ = run(raw)
    assert not seen.errors
    assert statuses(answer) == [200]
    assert answer.endswith(f"POST /echo {len(body)}\n".encode())


# Request smuggling: every way of giving a body two framings, or an ambiguous one.
SMUGGLE_HEADERS = [
    "Content-Length: 4\r\nTransfer-Encoding: chunked",
    "Transfer-Encoding: chunked\r\nContent-Length: 4",
    "Content-Length: 4\r\nTransfer-Encoding: CHUNKED",
    "Content-Length: 4\r\nTransfer-encoding: chunked",
    "Content-Length: 4\r\nTransfer-Encoding:  chunked ",
    "Content-Length: 4\r\nTransfer-Encoding: gzip, chunked",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
    "Transfer-Encoding: xchunked",
    "Transfer-Encoding: chunked, identity",
    "Transfer-Encoding : chunked",
    "Transfer-Encoding:\tchunked\r\nContent-Length: 4",
    "Content-Length: 4\r\nContent-Length: 40",
    "Content-Length: 4, 40",
    "Content-Length: +4",
    "Content-Length: 0x4",
    "Content-Length : 4",
    " Transfer-Encoding: chunked",
    "Transfer-Encoding\r\n : chunked",
]


@settings(max_examples=80 * SCALE, deadline=None)
@given(framing=st.sampled_from(SMUGGLE_HEADERS),
       method=st.sampled_from(["POST", "GET", "PUT"]))
def test_smuggling_attempts_get_400_and_never_reach_the_handler(framing: str,
                                                                method: str) -> None:
    raw = (f"{method} /first HTTP/1.1\r\nHost: svc\r\n{framing}\r\n\r\n"
           "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n").encode()
    answer, seen, _ = run(raw)
    assert not seen.errors
    assert "/smuggled" not in seen.targets, f"smuggled request served: {framing!r}"
    assert statuses(answer) == [400], (framing, answer[:120])


@settings(max_examples=25 * SCALE, deadline=None)
@given(extra=st.integers(1, 3 * MAX_HEAD), many=st.booleans())
def test_oversized_heads_get_431(extra: int, many: bool) -> None:
    if many:
        count = (MAX_HEAD + extra) // 12 + 1
        fields = "".join(f"x-{i:05x}: 1\r\n" for i in range(count))
    else:
        fields = f"x-big: {'a' * (MAX_HEAD + extra)}\r\n"
    answer, seen, _ = run(f"GET / HTTP/1.1\r\nHost: svc\r\n{fields}\r\n".encode())
    assert not seen.errors and seen.targets == []
    assert statuses(answer) == [431]


def test_head_just_under_the_limit_is_served() -> None:
    fields = f"x-big: {'a' * (MAX_HEAD - 200)}\r\n"
    answer, _, _ = run(f"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n{fields}\r\n"
                       .encode())
    assert statuses(answer) == [200]


def test_slowloris_gets_408_at_the_deadline_not_per_byte() -> None:
    """One byte every 50 ms never completes the head: cut HEAD_TIMEOUT after the first
    byte, however slowly the rest trickles in."""
    head = b"GET / HTTP/1.1\r\nHost: svc\r\nX-Slow: " + b"a" * 400
    answer, seen, took = run([head[i:i + 1] for i in range(len(head))], gap=0.05, limit=10)
    print(f"slowloris: 408 after {took:.2f} s (head timeout {HEAD_TIMEOUT} s)")
    assert statuses(answer) == [408]
    assert seen.targets == [] and not seen.errors
    assert HEAD_TIMEOUT <= took < HEAD_TIMEOUT + 1.0


def test_idle_keep_alive_is_not_a_slowloris() -> None:
    """Between requests nothing is pending: a client may pause longer than the head
    timeout and then send its next request on the same connection."""
    first = b"GET /1 HTTP/1.1\r\nHost: svc\r\n\r\n"
    second = b"GET /2 HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"
    answer, seen, _ = run([first, second], gap=HEAD_TIMEOUT * 2)
    assert statuses(answer) == [200, 200] and seen.targets == ["/1", "/2"]


def test_protocol_sniff_does_not_wait_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that sends "P" (could be POST, could be the HTTP/2 preface) and stops is
    closed after the head timeout by the sniffing front door too."""
    monkeypatch.setattr(waypoint_server, "HEAD_TIMEOUT", HEAD_TIMEOUT)
    answer, seen, took = run(b"P", sniff=True, half_close=False, limit=10)
    assert answer == b"" and not seen.errors
    assert HEAD_TIMEOUT <= took < HEAD_TIMEOUT + 1.0

"""HTTP/1.1 on both sides of the waypoint, parsed with httptools (llhttp).

Server side: keep-alive and pipelined requests served in order, chunked and
Content-Length bodies streamed, `Expect: 100-continue` answered by the waypoint itself
when the request is let through (a request denied before its body is read never makes
the client send it), Upgrade (WebSocket) switched to a raw byte relay after a 101.

Client side: one request at a time per connection, response bodies streamed back;
the connection returns to its pool only when the response was read to the end.

Reading is pull-based: bytes are read from the socket only when the request handler
asks for the next event, so a slow reader slows the sender (TCP backpressure) and no
task reads ahead of the handler."""

from __future__ import annotations

import contextlib
import http
import itertools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import httptools
import structlog

from waypoint.errors import (
    HeadTimeoutError,
    HeadTooLargeError,
    ProtocolError,
    UpstreamResetError,
)
from waypoint.messages import (
    HOP_BY_HOP,
    BodySource,
    EmptyBody,
    Headers,
    RequestHead,
    Response,
    UpgradedStream,
    end_to_end,
    header,
)

log = structlog.get_logger("waypoint.http1")

READ_SIZE = 65536
# Request line + headers: beyond this the request is answered 431 (Envoy's default
# max_request_headers_kb is 60; llhttp itself has no limit).
MAX_HEAD = 64 * 1024
# From the first byte of a request to the end of its head (slowloris): 408 after this.
HEAD_TIMEOUT = 10.0
NO_BODY_STATUS = frozenset({204, 304})

Event = tuple[str, object]


@dataclass
class DownstreamInfo:
    """Who is calling: the peer's SPIFFE ID when it came through an HBONE tunnel, the
    tunnel's :authority (the original destination ip:port), the peer address."""

    source_principal: str | None = None
    destination: str | None = None
    peer: str = ""


Handler = Callable[[RequestHead, BodySource, DownstreamInfo], Awaitable[Response]]


_REASONS = {s.value: s.phrase for s in http.HTTPStatus}
# Request headers the server side handles itself: hop-by-hop ones (RFC 9110 §7.6.1),
# Host (becomes the authority) and Expect (answered here).
_NOT_FORWARDED = HOP_BY_HOP | {"host", "expect"}
# Request headers the client side writes itself (or drops: te, pseudo-headers).
_CLIENT_OWN = frozenset({"content-length", "te", "connection", "upgrade", "host"})
_CLIENT_OWN_UPGRADE = frozenset({"content-length", "te", "host"})


def _reason(status: int) -> str:
    return _REASONS.get(status, "")


def _encode_headers(headers: Headers) -> bytes:
    return "".join([f"{k}: {v}\r\n" for k, v in headers]).encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class _Events:
    """httptools callbacks turned into a queue of (kind, payload) events: head, body,
    end (payload: trailers or None)."""

    def __init__(self, response: bool, max_head: int = MAX_HEAD) -> None:
        self.queue: deque[Event] = deque()
        self.parser: httptools.HttpRequestParser | httptools.HttpResponseParser
        self.parser = (httptools.HttpResponseParser(self) if response
                       else httptools.HttpRequestParser(self))
        self._url = b""
        self._headers: Headers = []
        self._trailers: Headers = []
        self._head_done = False
        self.head_bytes = 0
        self.max_head = max_head
        # A message has begun and its head is not complete yet (the slowloris window).
        self.in_head = False

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._trailers = []
        self._head_done = False
        self.head_bytes = 0
        self.in_head = True

    def _count(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > self.max_head:
            raise HeadTooLargeError(f"request head larger than {self.max_head} bytes")

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Trailers count too: they are headers sent after the body.
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > self.max_head:
            raise HeadTooLargeError(f"request head larger than {self.max_head} bytes")
        pair = (name.decode("latin-1").lower(), value.decode("latin-1"))
        (self._trailers if self._head_done else self._headers).append(pair)

    def on_headers_complete(self) -> None:
        self._head_done = True
        self.in_head = False
        p = self.parser
        info: dict[str, object] = {
            "headers": self._headers,
            "version": p.get_http_version(),
            "keep_alive": p.should_keep_alive(),
        }
        if isinstance(p, httptools.HttpRequestParser):
            info["method"] = p.get_method().decode("latin-1")
            info["target"] = self._url.decode("latin-1")
        else:
            info["status"] = p.get_status_code()
        self.queue.append(("head", info))

    def on_body(self, body: bytes) -> None:
        self.queue.append(("body", bytes(body)))

    def on_message_complete(self) -> None:
        self.queue.append(("end", self._trailers or None))


class _Reader:
    """Feeds socket bytes to the parser on demand; remembers bytes after an Upgrade."""

    def __init__(self, stream: anyio.abc.ByteStream, response: bool, initial: bytes = b"",
                 peer: str = "", head_timeout: float | None = None) -> None:
        self.stream = stream
        self.response = response
        self.events = _Events(response)
        self.pending = initial
        self.upgrade_rest: bytes | None = None
        self.eof = False
        self.peer = peer
        # Server side only: a request head must be complete this long after its first
        # byte (a deadline, so trickling one byte at a time does not extend it).
        self.head_timeout = head_timeout
        self._head_deadline: float | None = None

    def reset_parser(self, rest: bytes = b"") -> None:
        """A fresh parser (after a HEAD response, or an Upgrade refused by the backend)."""
        self.events = _Events(self.response)
        self.pending = rest + self.pending
        self.upgrade_rest = None

    def _feed(self, data: bytes) -> None:
        try:
            self.events.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            offset = e.args[0] if e.args else len(data)
            self.upgrade_rest = data[offset:]
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, HeadTooLargeError):
                raise HeadTooLargeError(f"{e.__context__} from {self.peer or 'peer'}") from None
            raise ProtocolError(f"malformed HTTP/1.1 from {self.peer or 'peer'}: {e}") from None
        except httptools.HttpParserError as e:
            raise ProtocolError(f"malformed HTTP/1.1 from {self.peer or 'peer'}: {e}") from None

    async def _receive(self) -> bytes:
        """Read from the socket; inside a request head, only until the head deadline."""
        if self.head_timeout is None:
            return await self.stream.receive(READ_SIZE)
        if not self.events.in_head:
            self._head_deadline = None
            return await self.stream.receive(READ_SIZE)
        if self._head_deadline is None:
            self._head_deadline = anyio.current_time() + self.head_timeout
        with anyio.move_on_after(self._head_deadline - anyio.current_time()):
            return await self.stream.receive(READ_SIZE)
        raise HeadTimeoutError(f"request head from {self.peer or 'peer'} not complete within "
                               f"{self.head_timeout:g} s")

    async def next(self) -> Event | None:
        """The next parser event, or None at end of stream / after an Upgrade."""
        q = self.events.queue
        while not q:
            if self.upgrade_rest is not None or self.eof:
                return None
            if self.pending:
                data, self.pending = self.pending, b""
            else:
                try:
                    data = await self._receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                        ConnectionError):
                    self.eof = True
                    return None
            self._feed(data)
        return q.popleft()


class _ServerRequestBody:
    def __init__(self, conn: Http1ServerConnection, expect_continue: bool) -> None:
        self._conn = conn
        self._expect_continue = expect_continue
        self._trailers: Headers | None = None
        self.done = False

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.done:
            return
        if self._expect_continue:
            self._expect_continue = False
            await self._conn.stream.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            ev = await self._conn.reader.next()
            if ev is None:
                raise ProtocolError("client closed the connection in the middle of a body")
            kind, payload = ev
            if kind == "body":
                yield payload  # type: ignore[misc]
            elif kind == "end":
                self._trailers = payload  # type: ignore[assignment]
                self.done = True
                return

    @property
    def trailers(self) -> Headers | None:
        return self._trailers

    async def aclose(self) -> None:
        return None


class Http1ServerConnection:
    """Serves one downstream HTTP/1.x connection until the client or a response
    closes it."""

    def __init__(self, stream: anyio.abc.ByteStream, handler: Handler, info: DownstreamInfo,
                 initial: bytes = b"", head_timeout: float = HEAD_TIMEOUT) -> None:
        self.stream = stream
        self.handler = handler
        self.info = info
        self.reader = _Reader(stream, response=False, initial=initial, peer=info.peer,
                              head_timeout=head_timeout)

    async def serve(self) -> None:
        try:
            while await self._one_exchange():
                pass
        except HeadTooLargeError as e:
            log.debug("downstream head too large", error=str(e), peer=self.info.peer)
            await self._send_quietly(self._local(431, "request header fields too large",
                                                 close=True))
        except HeadTimeoutError as e:
            log.debug("downstream head timeout", error=str(e), peer=self.info.peer)
            await self._send_quietly(self._local(408, "request timeout", close=True))
        except ProtocolError as e:
            log.debug("downstream protocol error", error=str(e), peer=self.info.peer)
            await self._send_quietly(self._local(400, "bad request", close=True))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            pass

    async def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(Exception):  # the client is gone; nothing left to tell it
            await self.stream.send(data)

    def _local(self, status: int, text: str, close: bool) -> bytes:
        body = (text + "\n").encode()
        head = f"HTTP/1.1 {status} {_reason(status)}\r\ncontent-type: text/plain\r\n" \
               f"content-length: {len(body)}\r\n" + ("connection: close\r\n" if close else "")
        return head.encode() + b"\r\n" + body

    async def _one_exchange(self) -> bool:
        ev = await self.reader.next()
        while ev is not None and ev[0] == "end":  # the end of a bodiless previous request
            ev = await self.reader.next()
        if ev is None:
            return False
        kind, info = ev
        if kind != "head" or not isinstance(info, dict):
            raise ProtocolError("request body without a request head")
        headers: Headers = info["headers"]
        version: str = info["version"]
        method: str = info["method"]
        target: str = info["target"]
        keep_alive = bool(info["keep_alive"])
        if not target.startswith("/"):
            if target.startswith(("http://", "https://")):  # absolute-form (proxy style)
                rest = target.split("://", 1)[1]
                cut = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
                target = rest[cut:] if rest[cut:cut + 1] == "/" else "/" + rest[cut:]
            elif method != "OPTIONS" or target != "*":
                raise ProtocolError(f"unsupported request target {target[:64]!r}")
        # One pass for the headers the server side reads (the first value of each).
        seen: dict[str, str] = {}
        for k, v in headers:
            if k in _NOT_FORWARDED or k == "content-length":
                seen.setdefault(k, v)
        authority = seen.get("host") or self.info.destination or ""
        upgrade = seen.get("upgrade")
        connection = seen.get("connection")
        connection_tokens = {t.strip().lower() for t in (connection or "").split(",")}
        wants_upgrade = upgrade is not None and "upgrade" in connection_tokens
        expect = seen.get("expect", "").lower() == "100-continue"
        te_trailers = "trailers" in seen.get("te", "").lower()
        has_body = seen.get("content-length") not in (None, "0") or \
            "transfer-encoding" in seen
        if connection is None:  # nothing named hop-by-hop beyond the standard set
            fwd = [(k, v) for k, v in headers if k not in _NOT_FORWARDED]
        else:
            fwd = [(k, v) for k, v in end_to_end(headers) if k not in ("host", "expect")]
        # Never h2c (as Envoy): a backend switching to raw HTTP/2 would carry every
        # later request past L7 policy. The request stays plain HTTP/1.1.
        h2c = upgrade is not None and "h2c" in {t.strip().lower() for t in upgrade.split(",")}
        if wants_upgrade and upgrade is not None and not h2c:
            fwd += [("connection", "upgrade"), ("upgrade", upgrade)]
        head = RequestHead(method, target, authority, fwd, "http", f"HTTP/{version}",
                           has_body=has_body)
        body = _ServerRequestBody(self, expect and has_body)
        resp = await self.handler(head, body if has_body else EmptyBody(), self.info)
        if resp.upgraded is not None and resp.status == 101:
            await self._switch(resp, method)
            return False
        if wants_upgrade and self.reader.upgrade_rest is not None:
            # Backend refused the upgrade: the connection goes on as plain HTTP/1.1.
            self.reader.reset_parser(self.reader.upgrade_rest)
        if has_body and not body.done:
            # The handler answered without reading the body (denied, rate limited...):
            # the rest of the connection is unparseable without it; close.
            keep_alive = False
        return await self._write_response(resp, method, version, keep_alive, te_trailers)

    async def _write_response(self, resp: Response, method: str, version: str,
                              keep_alive: bool, te_trailers: bool) -> bool:
        headers = end_to_end(resp.headers)
        bodyless = method == "HEAD" or resp.status in NO_BODY_STATUS or resp.status < 200
        length = resp.content_length
        chunked = False
        if bodyless or length is not None:
            pass
        elif version == "1.1":
            chunked = True
            headers = [(k, v) for k, v in headers if k != "content-length"]
            headers.append(("transfer-encoding", "chunked"))
        else:
            keep_alive = False  # HTTP/1.0 without a length: the close ends the body
        if not keep_alive:
            headers.append(("connection", "close"))
        elif version == "1.0":
            headers.append(("connection", "keep-alive"))
        out = bytearray(f"HTTP/1.1 {resp.status} {_reason(resp.status)}\r\n".encode())
        out += _encode_headers(headers) + b"\r\n"
        try:
            if bodyless:
                await self.stream.send(bytes(out))
                return keep_alive
            ready = take_ready(resp.body)
            if ready is not None:  # the whole body is here: one write, no iterator
                data, trailers = ready
                if chunked:
                    out += (_chunk(data) if data else b"") + b"0\r\n" + \
                        (_encode_headers(trailers) if trailers and te_trailers else b"") + \
                        b"\r\n"
                else:
                    out += data
                await self.stream.send(bytes(out))
                return keep_alive and (length is None or len(data) == length)
            sent = 0
            async for data in resp.body.chunks():
                if not data:
                    continue
                sent += len(data)
                out += _chunk(data) if chunked else data
                await self.stream.send(bytes(out))
                out.clear()
            if chunked:
                trailers = resp.body.trailers if te_trailers else None
                out += b"0\r\n" + (_encode_headers(trailers) if trailers else b"") + b"\r\n"
            if out:
                await self.stream.send(bytes(out))
            if length is not None and sent != length:
                return False  # the backend broke its promise; the client must not reuse
            return keep_alive
        finally:
            await resp.body.aclose()

    async def _switch(self, resp: Response, method: str) -> None:
        """101: send the head, then relay raw bytes both ways until both sides end."""
        upstream = resp.upgraded
        assert upstream is not None
        headers = end_to_end(resp.headers)
        upgrade = header(resp.headers, "upgrade")
        headers += [("connection", "upgrade")] + ([("upgrade", upgrade)] if upgrade else [])
        await self.stream.send(
            f"HTTP/1.1 101 {_reason(101)}\r\n".encode() + _encode_headers(headers) + b"\r\n")
        rest = (self.reader.upgrade_rest or b"") + self.reader.pending
        if rest:
            await upstream.send(rest)
        await relay_raw(self.stream, upstream)


async def relay_raw(a: UpgradedStream, b: UpgradedStream) -> None:
    """Copy bytes both ways; each direction half-closes when its source ends."""

    async def pump(src: UpgradedStream, dst: UpgradedStream) -> None:
        try:
            while True:
                data = await src.receive(READ_SIZE)
                await dst.send(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                ConnectionError):
            pass
        with contextlib.suppress(Exception):  # the other side is already gone
            await dst.send_eof()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump, a, b)
            tg.start_soon(pump, b, a)
    finally:
        for s in (a, b):
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await s.aclose()


def take_ready(body: BodySource) -> tuple[bytes, Headers | None] | None:
    """The whole of a body already in memory (bytes, trailers), consumed; None when
    some of it is still to be read: then iterate `chunks()` as usual."""
    take = getattr(body, "take_ready", None)
    return take() if take is not None else None


class _ClientResponseBody:
    def __init__(self, conn: Http1ClientConnection, close_delimited: bool) -> None:
        self._conn = conn
        self._close_delimited = close_delimited
        self._trailers: Headers | None = None
        self._done = False

    def take_ready(self) -> tuple[bytes, Headers | None] | None:
        """The common case of a small response: its body and end were parsed with its
        head. Taken without a coroutine; the connection goes back to the pool."""
        if self._done:
            return None
        q = self._conn.reader.events.queue
        if not q or q[-1][0] != "end" or any(kind != "body" for kind, _ in
                                              itertools.islice(q, len(q) - 1)):
            return None
        parts = [q.popleft()[1] for _ in range(len(q) - 1)]
        self._trailers = q.popleft()[1]  # type: ignore[assignment]
        self._done = True
        self._conn.finish(reusable=self._conn.keep_alive)
        data = parts[0] if len(parts) == 1 else b"".join(parts)  # type: ignore[arg-type]
        return data, self._trailers  # type: ignore[return-value]

    async def chunks(self) -> AsyncIterator[bytes]:
        reader = self._conn.reader
        while not self._done:
            ev = await reader.next()
            if ev is None:
                if self._close_delimited:
                    self._done = True
                    self._conn.finish(reusable=False)
                    return
                self._conn.finish(reusable=False)
                raise UpstreamResetError(self._conn.peer, "closed in the middle of a body")
            kind, payload = ev
            if kind == "body":
                yield payload  # type: ignore[misc]
            elif kind == "end":
                self._trailers = payload  # type: ignore[assignment]
                self._done = True
                self._conn.finish(reusable=self._conn.keep_alive)

    @property
    def trailers(self) -> Headers | None:
        return self._trailers

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._conn.finish(reusable=False)


class Http1ClientConnection:
    """One upstream HTTP/1.1 connection. `on_release(conn, reusable)` is called once
    per request when its response is done with (read to the end, or abandoned).
    The request body is sent by a task the pool's task group owns (`spawn`), so the
    response can stream back while a long body is still going up."""

    def __init__(self, stream: anyio.abc.ByteStream, peer: str,
                 on_release: Callable[[Http1ClientConnection, bool], None],
                 spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], None]) -> None:
        self.stream = stream
        self.peer = peer
        self.reader = _Reader(stream, response=True, peer=peer)
        self.on_release = on_release
        self.spawn = spawn
        self.keep_alive = True
        self.requests = 0
        self.closed = False
        self.detached = False  # handed over raw after a 101: the pool must not close it
        self._busy = False
        self._sender: anyio.CancelScope | None = None
        self._body_sent = True

    def finish(self, reusable: bool) -> None:
        if not self._busy:
            return
        self._busy = False
        if not self._body_sent:
            reusable = False  # the backend answered before taking the whole body
            if self._sender is not None:
                self._sender.cancel()
        if not reusable:
            self.keep_alive = False
        self.on_release(self, reusable and self.keep_alive and not self.closed)

    async def aclose(self) -> None:
        self.closed = True
        if self._sender is not None:
            self._sender.cancel()
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await self.stream.aclose()

    async def request(self, head: RequestHead, body: BodySource) -> Response:
        """Send one request and return once the response head arrived; the body
        streams from the returned Response."""
        self._busy = True
        self.requests += 1
        upgrade = header(head.headers, "upgrade") is not None
        own = _CLIENT_OWN_UPGRADE if upgrade else _CLIENT_OWN
        lines = [f"{head.method} {head.target} HTTP/1.1\r\nhost: {head.authority}\r\n"]
        lines += [f"{k}: {v}\r\n" for k, v in head.headers
                  if k not in own and not k.startswith(":")]
        length = head.body_length
        if head.has_body:
            lines.append(f"content-length: {length}\r\n" if length is not None
                         else "transfer-encoding: chunked\r\n")
        elif head.method in ("POST", "PUT", "PATCH"):
            lines.append("content-length: 0\r\n")
        lines.append("\r\n")
        data = "".join(lines).encode("latin-1")
        try:
            if not head.has_body:
                await self.stream.send(data)
            else:
                self._body_sent = False
                scope = self._sender = anyio.CancelScope()
                started = anyio.Event()

                async def send_body() -> None:
                    with scope:
                        started.set()
                        await self._send_body(data, body, length is None)

                self.spawn(send_body)
                await started.wait()
            return await self._read_head(head.method, upgrade)
        except BaseException:
            self.keep_alive = False
            self.finish(reusable=False)
            raise

    async def _send_body(self, head: bytes, body: BodySource, chunked: bool) -> None:
        out = bytearray(head)
        try:
            async for data in body.chunks():
                if not data:
                    continue
                out += _chunk(data) if chunked else data
                await self.stream.send(bytes(out))
                out.clear()
            if chunked:
                trailers = body.trailers
                out += b"0\r\n" + (_encode_headers(trailers) if trailers else b"") + b"\r\n"
            if out:
                await self.stream.send(bytes(out))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError,
                ProtocolError):
            # The response (or its absence) tells the story; a client that vanished
            # mid-body makes the backend connection unusable.
            self.keep_alive = False
            return
        self._body_sent = True

    async def _read_head(self, method: str, upgrade: bool) -> Response:
        reader = self.reader
        while True:
            ev = await reader.next()
            if ev is None:
                raise UpstreamResetError(self.peer, "closed before a response head")
            kind, info = ev
            if kind != "head" or not isinstance(info, dict):
                raise UpstreamResetError(self.peer, "response body without a head")
            status: int = info["status"]
            headers: Headers = info["headers"]
            if 100 <= status < 200 and status != 101:
                await self._skip_to_end()
                continue
            break
        self.keep_alive = self.keep_alive and bool(info["keep_alive"])
        if status == 101 and upgrade and reader.upgrade_rest is not None:
            rest = reader.upgrade_rest
            self.detached = True
            self.finish(reusable=False)
            return Response(status, headers, EmptyBody(),
                            upgraded=_Prefixed(self.stream, rest), upstream_host=self.peer)
        if method == "HEAD" or status in NO_BODY_STATUS:
            if method == "HEAD":
                await self._skip_to_end_of_head_response()
            else:
                await self._skip_to_end()
            self.finish(reusable=self.keep_alive)
            return Response(status, headers, EmptyBody(), upstream_host=self.peer)
        close_delimited = header(headers, "content-length") is None and \
            header(headers, "transfer-encoding") is None
        if close_delimited:
            self.keep_alive = False
        return Response(status, headers, _ClientResponseBody(self, close_delimited),
                        upstream_host=self.peer)

    async def _skip_to_end(self) -> None:
        while True:
            ev = await self.reader.next()
            if ev is None or ev[0] == "end":
                return

    async def _skip_to_end_of_head_response(self) -> None:
        """llhttp does not know the request was HEAD and would wait for a body of
        Content-Length bytes: the message ends at its head, so start a new parser."""
        q = self.reader.events.queue
        if q and q[0][0] == "end":
            q.popleft()
            return
        self.reader.reset_parser()


class _Prefixed:
    """An upgraded upstream stream whose first bytes were already read."""

    def __init__(self, stream: anyio.abc.ByteStream, first: bytes) -> None:
        self._stream = stream
        self._first = first

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        if self._first:
            data, self._first = self._first, b""
            return data
        return await self._stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self._stream.send(item)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

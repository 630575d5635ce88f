"""Protocol-neutral HTTP messages shared by the HTTP/1.1 and HTTP/2 codecs, the
pipeline and the upstream pool: heads are plain data, bodies are async sources.

Header names are lower case (HTTP/2 requires it, HTTP/1.1 is case-insensitive) and
kept as an ordered list of pairs because repeated headers are legal and meaningful."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl

Headers = list[tuple[str, str]]

# Hop-by-hop headers (RFC 9110 §7.6.1) never cross the proxy.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te",
    "trailer", "proxy-authenticate", "proxy-authorization", "http2-settings",
})

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


def header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """First value of a header, or None."""
    for k, v in headers:
        if k == name:
            return v
    return None


def end_to_end(headers: Iterable[tuple[str, str]], keep_te_trailers: bool = False) -> Headers:
    """Drop hop-by-hop headers and those named in Connection: a proxy must not
    forward them (RFC 9110 §7.6.1)."""
    headers = list(headers)
    if not keep_te_trailers and all(k != "connection" for k, _ in headers):
        return [(k, v) for k, v in headers if k not in HOP_BY_HOP]  # the common case
    named = set(HOP_BY_HOP)
    for k, v in headers:
        if k == "connection":
            named.update(t.strip().lower() for t in v.split(",") if t.strip())
    out: Headers = []
    for k, v in headers:
        if k in named:
            if keep_te_trailers and k == "te" and "trailers" in v.lower():
                out.append(("te", "trailers"))
            continue
        out.append((k, v))
    return out


@dataclass
class RequestHead:
    """What the pipeline decides on: method, target, authority and headers."""

    method: str
    target: str  # origin-form: path plus optional ?query
    authority: str
    headers: Headers
    scheme: str = "http"
    protocol: str = "HTTP/1.1"  # HTTP/1.0, HTTP/1.1 or HTTP/2, as request_protocol
    has_body: bool = False  # False: the request ends with its head

    @property
    def body_length(self) -> int | None:
        v = header(self.headers, "content-length")
        return int(v) if v is not None and v.isdigit() else None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> list[tuple[str, str]]:
        _, sep, q = self.target.partition("?")
        return parse_qsl(q, keep_blank_values=True) if sep else []

    @property
    def is_grpc(self) -> bool:
        ct = header(self.headers, "content-type") or ""
        return ct.startswith("application/grpc")

    def copy(self) -> RequestHead:
        return RequestHead(self.method, self.target, self.authority, list(self.headers),
                           self.scheme, self.protocol, self.has_body)


class BodySource(Protocol):
    """A message body read once, chunk by chunk; trailers known after the last chunk.
    `aclose` releases what backs it (an upstream connection) when the reader stops
    early; it is a no-op once the body was read to the end."""

    def chunks(self) -> AsyncIterator[bytes]: ...

    @property
    def trailers(self) -> Headers | None: ...

    async def aclose(self) -> None: ...


class EmptyBody:
    """No body (GET, 204, HEAD responses, local replies without text)."""

    async def chunks(self) -> AsyncIterator[bytes]:
        return
        yield b""  # pragma: no cover - makes this an async generator

    @property
    def trailers(self) -> Headers | None:
        return None

    async def aclose(self) -> None:
        return None


class BytesBody:
    """A body that is already in memory (local replies, replays)."""

    def __init__(self, data: bytes, trailers: Headers | None = None) -> None:
        self.data = data
        self._trailers = trailers

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.data:
            yield self.data

    @property
    def trailers(self) -> Headers | None:
        return self._trailers

    async def aclose(self) -> None:
        return None


class ReplayableBody:
    """Keeps a copy of the request body (up to `limit` bytes) while it streams to the
    first try, so a retry or a mirror can send it again. Past the limit the copy is
    dropped and `replayable` turns False: the request is not retried (as Envoy's
    retry buffer). Only one attempt reads at a time; a new attempt first replays the
    copy, then continues from the source where the previous attempt stopped."""

    def __init__(self, source: BodySource, limit: int = 1 << 20, empty: bool = False) -> None:
        self._source = source
        self._iter: AsyncIterator[bytes] | None = None
        self._buf: list[bytes] = []
        self._size = 0
        self._limit = limit
        self.complete = empty
        self.overflowed = False
        self.size = 0  # bytes read from the source so far, kept or not

    @property
    def replayable(self) -> bool:
        return not self.overflowed

    @property
    def trailers(self) -> Headers | None:
        return self._source.trailers

    def content(self) -> bytes | None:
        """The whole body, when it has been read to the end and kept."""
        if self.complete and not self.overflowed:
            return b"".join(self._buf)
        return None

    def attempt(self) -> BodySource:
        return _Attempt(self)

    async def _next(self, index: int) -> bytes | None:
        if index < len(self._buf):
            return self._buf[index]
        if self.complete:
            return None
        if self._iter is None:
            self._iter = self._source.chunks().__aiter__()
        try:
            chunk = await self._iter.__anext__()
        except StopAsyncIteration:
            self.complete = True
            return None
        self.size += len(chunk)
        if not self.overflowed:
            self._size += len(chunk)
            if self._size > self._limit:
                self.overflowed = True
                self._buf.clear()
            else:
                self._buf.append(chunk)
        return chunk

    async def aclose(self) -> None:
        await self._source.aclose()


class _Attempt:
    def __init__(self, parent: ReplayableBody) -> None:
        self._parent = parent

    async def chunks(self) -> AsyncIterator[bytes]:
        p = self._parent
        if p.overflowed and p._iter is not None:
            raise RuntimeError("request body was not kept: it cannot be sent twice")
        index = 0
        while True:
            chunk = await p._next(index)
            if chunk is None:
                return
            index += 1
            yield chunk

    @property
    def trailers(self) -> Headers | None:
        return self._parent.trailers

    async def aclose(self) -> None:
        return None


@dataclass
class Response:
    """A response on its way back to the client. `upgraded` is set on a 101 response
    to an Upgrade request: after the head, bytes flow raw both ways."""

    status: int
    headers: Headers
    body: BodySource = field(default_factory=EmptyBody)
    upgraded: UpgradedStream | None = None
    # Filled by the pipeline for telemetry: which backend answered, response flags.
    upstream_host: str = ""
    flags: list[str] = field(default_factory=list)

    @property
    def content_length(self) -> int | None:
        v = header(self.headers, "content-length")
        return int(v) if v is not None and v.isdigit() else None


class UpgradedStream(Protocol):
    """The raw byte stream left after a 101 Switching Protocols."""

    async def receive(self, max_bytes: int = 65536) -> bytes: ...

    async def send(self, item: bytes) -> None: ...

    async def send_eof(self) -> None: ...

    async def aclose(self) -> None: ...


def local_response(status: int, text: str, extra: Headers | None = None,
                   flag: str = "") -> Response:
    """A reply the waypoint makes itself (403, 404, 429, 503, 504...)."""
    data = (text + "\n").encode() if text else b""
    headers: Headers = [("content-type", "text/plain"), ("content-length", str(len(data)))]
    headers.extend(extra or [])
    return Response(status, headers, BytesBody(data), flags=[flag] if flag else [])

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


def set_header(headers: Headers, name: str, value: str) -> None:
    """Replace every occurrence of a header with one value."""
    headers[:] = [(k, v) for k, v in headers if k != name]
    headers.append((name, value))


def remove_header(headers: Headers, name: str) -> None:
    headers[:] = [(k, v) for k, v in headers if k != name]


def end_to_end(headers: Iterable[tuple[str, str]], keep_te_trailers: bool = False) -> Headers:
    """Drop hop-by-hop headers and those named in Connection: a proxy must not
    forward them (RFC 9110 §7.6.1)."""
    headers = list(headers)
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
                           self.scheme, self.protocol)


class BodySource(Protocol):
    """A message body read once, chunk by chunk; trailers known after the last chunk."""

    def chunks(self) -> AsyncIterator[bytes]: ...

    @property
    def trailers(self) -> Headers | None: ...


class EmptyBody:
    """No body (GET, 204, HEAD responses, local replies without text)."""

    async def chunks(self) -> AsyncIterator[bytes]:
        return
        yield b""  # pragma: no cover - makes this an async generator

    @property
    def trailers(self) -> Headers | None:
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

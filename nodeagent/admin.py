"""The node agent's 15020 endpoint: Prometheus metrics, readiness and a status document.

Served inside the node's network namespace on the node's host IP, as a real node's
agent serves on its host network; `ambientctl` reaches it there.

The answers are computed by `AdminEndpoints` (sans-I/O: a path in, a `Reply` out) and
served by `serve_http`, a few lines of asyncio, in both the local and the Kubernetes
agent: a handful of GET endpoints polled now and then do not need a web framework, and
aiohttp alone was ~10 MB of the node proxy's resident memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

log = structlog.get_logger("nodeagent.admin")

StatusProvider = Callable[[], dict[str, Any]]
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 5.0
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           503: "Service Unavailable"}


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes


class AdminEndpoints:
    """What each admin path answers; no I/O, so both servers share it."""

    def __init__(self, metrics_text: Callable[[], bytes], status: StatusProvider,
                 ready: Callable[[], bool], *, live: bool = False) -> None:
        self._routes: dict[str, Callable[[], Reply]] = {
            "/metrics": lambda: Reply(200, METRICS_CONTENT_TYPE, metrics_text()),
            "/stats/prometheus": lambda: Reply(200, METRICS_CONTENT_TYPE, metrics_text()),
            "/healthz/ready": lambda: _readiness(ready()),
            "/status": lambda: Reply(200, "application/json; charset=utf-8",
                                     _dumps(status()).encode()),
        }
        if live:  # the DaemonSet's liveness probe: the event loop answers
            self._routes["/healthz/live"] = lambda: Reply(200, "text/plain; charset=utf-8",
                                                          b"live\n")

    @property
    def paths(self) -> list[str]:
        return list(self._routes)

    def get(self, path: str) -> Reply:
        route = self._routes.get(path.split("?", 1)[0])
        if route is None:
            return Reply(404, "text/plain; charset=utf-8", b"not found\n")
        return route()


def _readiness(ok: bool) -> Reply:
    return Reply(200 if ok else 503, "text/plain; charset=utf-8",
                 b"ready\n" if ok else b"not ready\n")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)


def parse_request_head(head: bytes) -> tuple[str, str] | Reply:
    """(method, target) of an HTTP/1.x request head, or the error Reply to send."""
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return Reply(400, "text/plain; charset=utf-8", b"bad request\n")
    if parts[0] not in ("GET", "HEAD"):
        return Reply(405, "text/plain; charset=utf-8", b"only GET\n")
    return parts[0], parts[1]


def render_reply(reply: Reply, with_body: bool = True) -> bytes:
    head = (f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Unknown')}\r\n"
            f"Content-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(reply.body)}\r\n"
            "Connection: close\r\n\r\n").encode("latin-1")
    return head + reply.body if with_body else head


async def serve_http(endpoints: AdminEndpoints, sock: socket.socket) -> asyncio.Server:
    """Serve `endpoints` on a listening socket: one request per connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                parsed = parse_request_head(head)
                if isinstance(parsed, Reply):
                    writer.write(render_reply(parsed))
                else:
                    method, target = parsed
                    writer.write(render_reply(endpoints.get(target), method != "HEAD"))
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError) as e:
            log.debug("admin request dropped", error=repr(e))
        except Exception:  # a failing status provider must not kill the server
            log.exception("admin request failed")
            with contextlib.suppress(ConnectionError, RuntimeError):
                writer.write(render_reply(Reply(503, "text/plain; charset=utf-8",
                                                b"internal error\n")))
        finally:
            writer.close()

    return await asyncio.start_server(handle, sock=sock, limit=MAX_REQUEST_HEAD)

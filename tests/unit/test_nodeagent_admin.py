"""The node agent's 15020 server: real sockets, real HTTP clients (http.client, raw)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from typing import Any

import pytest

from nodeagent.admin import AdminEndpoints, Reply, parse_request_head, serve_http


def endpoints(ready: bool = True, status: dict[str, Any] | None = None) -> AdminEndpoints:
    def failing_status() -> dict[str, Any]:
        raise ValueError("status provider broke")

    return AdminEndpoints(lambda: b"up 1.0\n",
                          (lambda: status) if status is not None else failing_status,
                          lambda: ready)


def test_paths_and_replies_without_io() -> None:
    e = endpoints(ready=False, status={"node": "n1"})
    assert e.get("/metrics").body == b"up 1.0\n"
    assert e.get("/stats/prometheus").content_type.startswith("text/plain; version=")
    assert e.get("/healthz/ready") == Reply(503, "text/plain; charset=utf-8", b"not ready\n")
    assert json.loads(e.get("/status?x=1").body) == {"node": "n1"}
    assert e.get("/nope").status == 404


@pytest.mark.parametrize("head, expected", [
    (b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n", ("GET", "/status")),
    (b"HEAD /metrics HTTP/1.0\r\n\r\n", ("HEAD", "/metrics")),
    (b"POST /status HTTP/1.1\r\n\r\n", 405),
    (b"GET status HTTP/1.1\r\n\r\n", 400),
    (b"GET /status SPDY/3\r\n\r\n", 400),
    (b"\r\n\r\n", 400),
])
def test_request_head_parsing(head: bytes, expected: tuple[str, str] | int) -> None:
    got = parse_request_head(head)
    assert (got.status if isinstance(got, Reply) else got) == expected


def run_server(e: AdminEndpoints, client: Any) -> Any:
    """Serve `e` on loopback and run the blocking `client(port)` in a thread."""

    async def main() -> Any:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = await serve_http(e, sock)
        try:
            return await asyncio.to_thread(client, sock.getsockname()[1])
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def test_serves_every_endpoint_over_http() -> None:
    def client(port: int) -> list[tuple[int, str, bytes]]:
        return [get(port, p) for p in ("/metrics", "/healthz/ready", "/status", "/x")]

    metrics, ready, status, missing = run_server(endpoints(status={"pods": [1, 2]}), client)
    assert metrics == (200, metrics[1], b"up 1.0\n") and "version=" in metrics[1]
    assert ready == (200, "text/plain; charset=utf-8", b"ready\n")
    assert json.loads(status[2]) == {"pods": [1, 2]}
    assert missing[0] == 404


def test_head_has_no_body_and_post_is_refused() -> None:
    def client(port: int) -> tuple[tuple[int, str, bytes], tuple[int, str, bytes]]:
        return get(port, "/metrics", "HEAD"), get(port, "/metrics", "POST")

    head, post = run_server(endpoints(status={}), client)
    assert head[0] == 200 and head[2] == b""
    assert post[0] == 405


def test_a_failing_provider_answers_503_and_the_server_keeps_serving() -> None:
    def client(port: int) -> tuple[int, int]:
        return get(port, "/status")[0], get(port, "/healthz/ready")[0]

    assert run_server(endpoints(), client) == (503, 200)


def test_garbage_and_oversized_requests_are_dropped_not_fatal() -> None:
    def client(port: int) -> tuple[bytes, bytes, int]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"BREW /pot HTCPCP/1.0\r\n\r\n")
            garbage = s.recv(100)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
            try:
                oversized = s.recv(100)
            except ConnectionResetError:
                oversized = b""
        return garbage, oversized, get(port, "/healthz/ready")[0]

    garbage, oversized, after = run_server(endpoints(status={}), client)
    assert garbage.startswith(b"HTTP/1.1 400 ")
    assert not oversized.startswith(b"HTTP/1.1 200")
    assert after == 200


def test_the_kubernetes_agent_adds_liveness() -> None:
    """The DaemonSet probes /healthz/live; the local agent has no such probe."""
    assert endpoints(status={}).get("/healthz/live").status == 404
    live = AdminEndpoints(lambda: b"", dict, lambda: False, live=True)
    assert live.get("/healthz/live") == Reply(200, "text/plain; charset=utf-8", b"live\n")
    assert live.get("/healthz/ready").status == 503

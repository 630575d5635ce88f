"""gRPC and HTTP/2 through the waypoint with real clients: grpcio unary and
server-streaming calls against a grpcio server (status, messages, trailers), and an
HTTP/2 (h2c prior knowledge) httpx client reaching an HTTP/1.1-only backend."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest

from tests.e2e.waypoint_helpers import (
    Backend,
    BackendLoop,
    Waypoint,
    echo,
    grpc_backend,
    host,
    run_waypoint,
    service,
    waypoint_snapshot,
)

pytestmark = pytest.mark.e2e


@dataclass
class Setup:
    wp: Waypoint
    channel: grpc.Channel


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    loop = BackendLoop()
    try:
        e = loop.add(Backend("echo"), echo)
        with grpc_backend() as gport:
            snap = waypoint_snapshot(
                [service("greeter", 9000, [gport], app_protocol="grpc"),
                 service("echo", 80, [e.port])], [], [], [], [])
            with run_waypoint(snap, tmp_path_factory.mktemp("wpg")) as wp:
                channel = grpc.insecure_channel(
                    f"127.0.0.1:{wp.port}",
                    options=[("grpc.default_authority", f"{host('greeter')}:9000")])
                try:
                    yield Setup(wp, channel)
                finally:
                    channel.close()
    finally:
        loop.close()


def _unary(ch: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return ch.unary_unary("/test.Echo/Say", request_serializer=None,
                          response_deserializer=None)


def test_grpc_unary_with_trailers(setup: Setup) -> None:
    resp, call = _unary(setup.channel).with_call(b"mesh", timeout=5)
    assert resp == b"hello mesh"
    assert call.code() == grpc.StatusCode.OK
    assert ("x-served-by", "grpc-backend") in call.trailing_metadata()


def test_grpc_error_status_and_trailers_pass_through(setup: Setup) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _unary(setup.channel)(b"fail", timeout=5)
    err = info.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == "you asked for it"
    assert ("x-detail", "asked-to-fail") in err.trailing_metadata()


def test_grpc_server_streaming(setup: Setup) -> None:
    call = setup.channel.unary_stream("/test.Echo/Count", request_serializer=None,
                                      response_deserializer=None)(b"50", timeout=5)
    items = list(call)
    assert items == [f"item-{i}".encode() for i in range(50)]
    assert call.code() == grpc.StatusCode.OK
    assert ("x-items", "50") in call.trailing_metadata()


def test_many_concurrent_grpc_calls_share_the_connection(setup: Setup) -> None:
    futures = [_unary(setup.channel).future(f"n{i}".encode(), timeout=10) for i in range(200)]
    assert [f.result() for f in futures] == [f"hello n{i}".encode() for i in range(200)]


def test_grpc_metrics_say_grpc(setup: Setup) -> None:
    _unary(setup.channel)(b"x", timeout=5)
    text = setup.wp.metrics()
    assert any('request_protocol="grpc"' in line and "greeter" in line
               for line in text.splitlines() if line.startswith("istio_requests_total{"))


def test_http2_client_to_http1_backend(setup: Setup) -> None:
    with httpx.Client(http1=False, http2=True, base_url=setup.wp.url) as c:
        r = c.post("/h2", content=b"over-h2", headers={"host": host("echo")})
        assert r.http_version == "HTTP/2"
        assert r.status_code == 200
        data = r.json()
        assert data["body"] == "over-h2" and data["method"] == "POST"
        big = c.get("/stream", headers={"host": host("echo")})
        assert big.text == "part0;part1;part2;part3;part4;"

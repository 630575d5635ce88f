"""Where the node proxy may deliver inbound connections (issue 18.1/18.3/18.4), and
the owner of connection tasks (issue 19.3). No root: pure rules and a real loopback
listener."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import pytest

from nodeagent.proxy import delivery
from nodeagent.proxy.pod_listeners import accept_loop


@dataclass(frozen=True)
class Pod:
    key: str = "shop/frontend"
    ip: str = "10.0.0.5"
    ip6: str = "fd00::5"


@pytest.mark.parametrize("port", [15001, 15006, 15008, 15020])
def test_the_proxy_ports_are_refused_and_named(port: int) -> None:
    with pytest.raises(delivery.SelfCall, match=f"port {port} is the proxy's") as e:
        delivery.check_port(Pod(), port)
    assert e.value.cause == "self_call"


@pytest.mark.parametrize("port", [1, 80, 8080, 15000, 15002, 15007, 15009, 15021, 65535])
def test_app_ports_pass(port: int) -> None:
    delivery.check_port(Pod(), port)


def test_a_captured_connection_from_the_pod_itself_is_a_loop() -> None:
    for own in ("10.0.0.5", "fd00::5"):
        with pytest.raises(delivery.SelfCall, match="own address"):
            delivery.check_peer(Pod(), own)
    delivery.check_peer(Pod(), "10.0.0.6")


def test_delivery_is_to_the_pod_address_never_loopback() -> None:
    assert delivery.app_address(Pod(), v6=False) == "10.0.0.5"
    assert delivery.app_address(Pod(), v6=True) == "fd00::5"
    assert delivery.app_address(Pod(ip6=""), v6=True) == "10.0.0.5"
    assert delivery.app_address(Pod(ip=""), v6=False) == "fd00::5"
    with pytest.raises(delivery.NoPodAddress):
        delivery.app_address(Pod(ip="", ip6=""), v6=False)


def test_a_failing_connection_task_is_logged_and_counted() -> None:
    async def main() -> list[BaseException]:
        failures: list[BaseException] = []
        tasks: set[asyncio.Task[None]] = set()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        async def broken(sock: socket.socket) -> None:
            sock.close()
            raise RuntimeError("handler bug")

        loop_task = asyncio.create_task(
            accept_loop(listener, broken, tasks, failures.append))
        client = socket.create_connection(listener.getsockname())
        try:
            for _ in range(100):
                if failures:
                    break
                await asyncio.sleep(0.02)
        finally:
            client.close()
            loop_task.cancel()
            listener.close()
        assert not tasks, "a finished task is still tracked"
        return failures

    failures = asyncio.run(main())
    assert [str(f) for f in failures] == ["handler bug"]

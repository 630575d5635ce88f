"""A peer reset that reaches the HBONE server inside an ExceptionGroup (the waypoint's
HTTP/2 and HTTP/1 servers read and write in anyio task groups) is the same ordinary end
as a bare reset: one debug line, no `hbone.handler_failed` traceback. Found by the red
team: a pod resetting its tunnel while the waypoint flushed got ~3 KB of traceback at
error level per connection (real TLS on loopback, no root)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest

from mesh.hbone import HboneClientPool, HboneRequest, HboneServer


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": True})


@pytest.mark.anyio
async def test_a_reset_wrapped_in_an_exception_group_logs_no_traceback(
        tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    from tests.hbone_helpers import hbone_serving, mtls_pair
    from tests.identity_helpers import new_ca

    server_ctx, client = mtls_pair(new_ca(tmp_path / "ca"))
    ended = asyncio.Event()

    async def read_in_a_task_group(request: HboneRequest) -> None:
        stream = await request.accept()

        async def drain() -> None:
            while True:
                await stream.receive()

        try:
            async with anyio.create_task_group() as tg:  # as waypoint/http2.py serves
                tg.start_soon(drain)
        finally:
            ended.set()

    server = HboneServer(lambda: server_ctx, read_in_a_task_group)
    async with hbone_serving(server) as port:
        pool = HboneClientPool()
        try:
            with capture_logs() as logs:
                for _ in range(10):
                    ended.clear()
                    stream = await pool.connect(client, ("127.0.0.1", port), "127.0.0.1:9")
                    await stream.send(b"x" * 100)
                    stream.reset()
                    await asyncio.wait_for(ended.wait(), 5)
                await asyncio.sleep(0.05)
            events = [entry["event"] for entry in logs]
            assert "hbone.handler_failed" not in events
            assert events.count("hbone.stream_ended_by_peer") == 10
        finally:
            await pool.aclose()

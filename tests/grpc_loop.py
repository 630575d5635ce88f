"""grpc.aio keeps completion-queue callbacks bound to the event loop of an earlier test;
when such a callback fires after that loop closed, it raises "Event loop is closed"
into the *current* test's loop, and anyio's runner reports it as this test's error.
The callbacks carry nothing of the current test (a grpc.aio limitation with one loop
per test), so that single error is dropped; every other loop error still fails the
test. Import the fixture into a module that runs grpc.aio under anyio."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator
from typing import Any

import pytest


def _stale_grpc_callback(context: dict[str, Any]) -> bool:
    exc = context.get("exception")
    if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    return any(f.name == "_handle_events" and "completion_queue" in f.filename
               for f in frames)


@pytest.fixture(autouse=True)
async def quiet_stale_grpc_callbacks() -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _stale_grpc_callback(context):
            return
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    loop.set_exception_handler(handler)
    yield
    loop.set_exception_handler(previous)

"""The part of an agent's life both agents (local and Kubernetes) share: run their
loops under the certificate manager until told to stop, then stop the loops so the
caller can drain connections. The caller owns what differs: which loops, which
servers and what to close after the drain."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine, Iterable
from typing import Any

import structlog

from nodeagent.certs import CertificateManager

log = structlog.get_logger("nodeagent.lifecycle")


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM (the kubelet's or `ambientctl down`'s) or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_until_stopped(stop: asyncio.Event, certs: CertificateManager,
                            loops: Iterable[Coroutine[Any, Any, None]],
                            drain_seconds: float) -> None:
    """Run `loops` (config subscription, watches, reconcilers) with certificates renewed
    until `stop` is set; a loop that fails ends them all (task group)."""
    async with certs, asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(coro) for coro in loops]
        await stop.wait()
        log.info("draining", deadline=drain_seconds)
        for task in tasks:
            task.cancel()

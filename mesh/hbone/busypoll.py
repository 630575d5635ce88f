"""Busy-polling the event loop for a short while after HBONE traffic (an experiment,
off by default: TunnelSettings.busy_poll).

After a message, the loop keeps turning (callbacks via call_soon, so each turn polls
the sockets with a zero timeout) instead of sleeping in epoll_wait, for `busy_poll`
seconds: an answer arriving meanwhile is read without a wake-up of the process.
It costs CPU for the whole window after every message (docs/performance.md)."""

from __future__ import annotations

import asyncio
import time
import weakref


class BusyPoller:
    """One per event loop: spins while any connection saw traffic within `window`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, window: float) -> None:
        self._loop = loop
        self.window = window
        self._until = 0.0
        self._spinning = False
        self.turns = 0

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop, window: float) -> BusyPoller:
        poller = _POLLERS.get(loop)
        if poller is None:
            poller = _POLLERS[loop] = cls(loop, window)
        return poller

    def activity(self) -> None:
        self._until = time.perf_counter() + self.window
        if not self._spinning:
            self._spinning = True
            self._loop.call_soon(self._spin)

    def _spin(self) -> None:
        if time.perf_counter() < self._until and not self._loop.is_closed():
            self.turns += 1
            self._loop.call_soon(self._spin)
        else:
            self._spinning = False


_POLLERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BusyPoller] = \
    weakref.WeakKeyDictionary()

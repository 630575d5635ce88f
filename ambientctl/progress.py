"""Drawing step-by-step progress: a spinner with the current detail on a terminal,
plain `✓ step` lines otherwise (CI logs, pipes)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.status import Status

from ambientctl.output import make_console


class StepPrinter:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or make_console()
        self._status: Status | None = None
        self._title = ""
        self._started = 0.0

    def step(self, text: str) -> None:
        self._close()
        self._title = text
        self._started = time.monotonic()
        if self.console.is_terminal:
            self._status = self.console.status(f"{text} ...")
            self._status.start()
        else:
            self.console.print(f"• {text} ...")

    def update(self, text: str) -> None:
        if self._status is not None:
            self._status.update(f"{self._title}: {text}")

    def done(self, text: str) -> None:
        took = time.monotonic() - self._started
        self._close()
        self.console.print(f"[green]✓[/green] {text} [dim]({took:.1f}s)[/dim]")

    def note(self, text: str) -> None:
        self.console.print(text)

    def fail(self) -> None:
        if self._title:
            self._close()
            self.console.print(f"[red]✗[/red] {self._title}")
            self._title = ""

    def _close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

"""The reliability tests' figures (requests, failures, latencies, fds, RSS) are their
output: show them at the end of every run, passed or failed, not only on failure."""

from __future__ import annotations

import pytest
from _pytest.terminal import TerminalReporter

_FIGURES: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # The call report's output includes what its (module) fixtures printed in setup.
    if report.nodeid.startswith("tests/reliability/") and report.capstdout and \
            report.when == "call":
        _FIGURES.append((report.nodeid, report.capstdout))


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for nodeid, text in _FIGURES:
        lines = [line for line in text.splitlines()
                 if line.strip() and not line.lstrip().startswith("{")]
        if lines:
            terminalreporter.write_line(nodeid)
            for line in lines:
                terminalreporter.write_line("  " + line)

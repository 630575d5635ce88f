"""Structured JSON logs on stderr, the same shape for every component.

structlog is imported inside the functions, not here: `keep_console_renderers_out`
must run before structlog is first loaded to have any effect."""

from __future__ import annotations

import logging
import sys


class LogLevelError(ValueError):
    def __init__(self, level: str) -> None:
        super().__init__(f"unknown log level {level!r}: use debug, info, warning or error")


def keep_console_renderers_out() -> None:
    """structlog loads rich (and pygments with it) whenever rich is installed, for its
    console renderer and pretty tracebacks. Our processes log JSON and use neither; in
    the node proxy they cost ~5 MB of resident memory. Call this first in a process
    entry point: rich then counts as not installed in that process. A no-op when
    structlog or rich is already loaded (a process that uses rich keeps it)."""
    if "structlog" not in sys.modules:
        sys.modules.setdefault("rich", None)  # type: ignore[arg-type]  # None: "not installed"


def configure_logging(level: str = "info") -> None:
    import structlog

    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise LogLevelError(level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )

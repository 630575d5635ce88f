"""Structured JSON logs on stderr, the same shape for every component."""

from __future__ import annotations

import logging
import sys

import structlog


class LogLevelError(ValueError):
    def __init__(self, level: str) -> None:
        super().__init__(f"unknown log level {level!r}: use debug, info, warning or error")


def configure_logging(level: str = "info") -> None:
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

"""Run the node agent on the C library's allocator, so a burst's memory goes back.

CPython's small-object allocator (pymalloc) keeps a 1 MiB arena for as long as one
object in it lives. After a burst of 1000 connections a few survivors scattered over
many arenas held ~8 MiB (+12 %) for good; with every allocation in glibc's heap, the
agent's malloc_trim after bursts returns it (+2 %, `tests/reliability/test_load.py`).
PYTHONMALLOC is read once at interpreter start, hence the re-exec (same pid)."""

from __future__ import annotations

import os
import sys


def use_system_allocator() -> None:
    """Re-exec this process with PYTHONMALLOC=malloc unless an allocator was chosen.

    Set PYTHONMALLOC yourself (e.g. `pymalloc`) to keep that choice: how the two are
    compared."""
    if os.environ.get("PYTHONMALLOC"):
        return
    os.execve(sys.executable, sys.orig_argv, {**os.environ, "PYTHONMALLOC": "malloc"})

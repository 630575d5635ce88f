"""The program set: which BPF functions exist, where each attaches, and compiling
them with bcc against the pinned maps of one installation.

All programs are compiled as one unit so they share the maps; bcc's
BPF_TABLE_PINNED makes the maps outlive any process: the first load creates and
pins them, every later load (an agent restart) reuses them with their contents.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import structlog

from ebpf import constants as C
from ebpf.errors import CompileError
from ebpf.layout import MAPS, render_c_header
from ebpf.pins import PinLayout

log = structlog.get_logger("ebpf")

SOURCES = ("common.bpf.h", "outbound.bpf.c", "original_dst.bpf.c", "inbound.bpf.c")


@dataclass(frozen=True)
class ProgramSpec:
    name: str  # C function name, also the pin and link name
    prog_type: int
    attach_type: int
    per_netns: bool = False  # linked to each enrolled pod's netns, not to the cgroup


CONNECT4 = ProgramSpec("am_connect4", C.PROG_TYPE_CGROUP_SOCK_ADDR, C.ATTACH_CGROUP_INET4_CONNECT)
CONNECT6 = ProgramSpec("am_connect6", C.PROG_TYPE_CGROUP_SOCK_ADDR, C.ATTACH_CGROUP_INET6_CONNECT)
SOCKOPS = ProgramSpec("am_sockops", C.PROG_TYPE_SOCK_OPS, C.ATTACH_CGROUP_SOCK_OPS)
GETPEERNAME4 = ProgramSpec(
    "am_getpeername4", C.PROG_TYPE_CGROUP_SOCK_ADDR, C.ATTACH_CGROUP_INET4_GETPEERNAME
)
GETPEERNAME6 = ProgramSpec(
    "am_getpeername6", C.PROG_TYPE_CGROUP_SOCK_ADDR, C.ATTACH_CGROUP_INET6_GETPEERNAME
)
SK_LOOKUP = ProgramSpec("am_sk_lookup", C.PROG_TYPE_SK_LOOKUP, C.ATTACH_SK_LOOKUP, True)

# Order matters on first install: the original-destination recorders go in before
# connect rewriting starts, so no captured connection lacks its record.
PROGRAMS: tuple[ProgramSpec, ...] = (
    SOCKOPS, GETPEERNAME4, GETPEERNAME6, CONNECT4, CONNECT6, SK_LOOKUP,
)
CGROUP_PROGRAMS = tuple(p for p in PROGRAMS if not p.per_netns)


def program_source(pins: PinLayout) -> str:
    """The whole translation unit: generated layout header, then each source file
    behind a #line marker so compiler errors name the real file and line."""
    parts = [render_c_header(pins.dir)]
    pkg = resources.files("ebpf")
    for name in SOURCES:
        parts.append(f'#line 1 "{name}"\n')
        parts.append((pkg / name).read_text())
    return "".join(parts)


class LoadedPrograms:
    """Program fds of one compile; holds the bcc object so the fds stay valid."""

    def __init__(self, bpf: Any, fds: dict[str, int]) -> None:
        self._bpf = bpf
        self.fds = fds

    def instructions(self, name: str) -> bytes:
        """A program's instructions as compiled (map fds of this bcc object in them)."""
        raw: bytes = self._bpf.dump_func(name.encode())
        return raw

    def map_fds(self) -> dict[int, str]:
        """fd -> map name for every map of the layout, as this bcc object opened them
        (the fds its compiled instructions refer to)."""
        from bcc import libbcc

        out = {}
        for spec in MAPS:
            fd = libbcc.lib.bpf_table_fd(self._bpf.module, spec.name.encode())
            if fd >= 0:
                out[fd] = spec.name
        return out

    def close(self) -> None:
        """Release the bcc object (its program fds); pinned objects live on."""
        if self._bpf is not None:
            with contextlib.suppress(Exception):
                self._bpf.cleanup()
            self._bpf = None
            self.fds = {}


def compile_and_load(pins: PinLayout) -> LoadedPrograms:
    """Compile with bcc (creating or reusing the pinned maps) and load every program."""
    try:
        from bcc import BPF
    except ImportError as exc:
        raise CompileError(
            "the `bcc` module is not importable (apt install python3-bpfcc; in a venv, "
            "link /usr/lib/python3/dist-packages/bcc into site-packages)"
        ) from exc
    started = time.monotonic()
    text = program_source(pins)
    stderr = io.StringIO()
    try:
        with _captured_stderr(stderr):
            bpf = BPF(text=text.encode(), cflags=["-Wno-unused-function", "-Wno-macro-redefined"])
    except Exception as exc:
        raise CompileError(f"{exc}\n{stderr.getvalue()[-4000:]}") from exc
    compiled = time.monotonic()
    fds: dict[str, int] = {}
    for spec in PROGRAMS:
        try:
            with _captured_stderr(stderr):
                fn = bpf.load_func(spec.name.encode(), spec.prog_type, None, spec.attach_type)
        except Exception as exc:
            bpf.cleanup()
            raise CompileError(
                f"kernel rejected {spec.name}: {exc}\n{stderr.getvalue()[-4000:]}"
            ) from exc
        fds[spec.name] = fn.fd
    log.info(
        "bpf programs loaded", pin=pins.name, compile_s=round(compiled - started, 3),
        load_s=round(time.monotonic() - compiled, 4), programs=len(fds),
    )
    return LoadedPrograms(bpf, fds)


@contextlib.contextmanager
def _captured_stderr(sink: io.StringIO) -> Any:
    """bcc and the verifier write diagnostics to fd 2; keep them for the error message."""
    import tempfile

    with tempfile.TemporaryFile(mode="w+") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.write(tmp.read())

"""Detached processes of the local mesh: start with logs to a file, remember them by
pid *and* kernel start time (so a recycled pid is never mistaken for ours), stop with
SIGTERM then SIGKILL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ambientctl.layout import MeshLayout


@dataclass(frozen=True)
class ProcessRecord:
    component: str
    pid: int
    start_time: int
    argv: list[str]


def start_time_of(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def is_alive(record: ProcessRecord) -> bool:
    if start_time_of(record.pid) != record.start_time:
        return False
    try:
        state = Path(f"/proc/{record.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


class ProcessTable:
    """The processes one local mesh started, recorded under its pids/ directory."""

    def __init__(self, layout: MeshLayout) -> None:
        self.layout = layout

    def start(self, component: str, argv: Sequence[str],
              env: Mapping[str, str] | None = None) -> ProcessRecord:
        self.layout.pids.mkdir(parents=True, exist_ok=True)
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.layout.log_file(component)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, **(env or {})}, close_fds=True,
            )
        started = start_time_of(proc.pid)
        record = ProcessRecord(component, proc.pid, started or 0, list(argv))
        self.layout.pid_file(component).write_text(json.dumps(record.__dict__))
        # The Popen object is dropped on purpose: the process outlives this command.
        # Python would warn about a child still running; mark it as reaped by us.
        proc.returncode = 0
        return record

    def get(self, component: str) -> ProcessRecord | None:
        try:
            data = json.loads(self.layout.pid_file(component).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return ProcessRecord(**data)

    def records(self) -> list[ProcessRecord]:
        if not self.layout.pids.is_dir():
            return []
        out = []
        for path in sorted(self.layout.pids.glob("*.json")):
            record = self.get(path.stem)
            if record is not None:
                out.append(record)
        return out

    def alive(self, component: str) -> bool:
        record = self.get(component)
        return record is not None and is_alive(record)

    def restart_if_dead(self, component: str, env: Mapping[str, str] | None = None
                        ) -> ProcessRecord | None:
        """Start a recorded component again with its recorded argv when it is not
        running; None when it was running."""
        record = self.get(component)
        if record is None or is_alive(record):
            return None
        return self.start(component, record.argv, env)

    def stop(self, component: str, timeout: float = 5.0) -> bool:
        """Stop one component; True when it was running."""
        record = self.get(component)
        if record is None:
            return False
        was_alive = stop_process(record, timeout)
        self.layout.pid_file(component).unlink(missing_ok=True)
        return was_alive


def stop_process(record: ProcessRecord, timeout: float = 5.0) -> bool:
    """SIGTERM the process group, wait, then SIGKILL what is left."""
    if not is_alive(record):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline:
            _reap(record.pid)
            if not is_alive(record):
                return True
            time.sleep(0.05)
    return True


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child (`up` then `down` in
    one Python process, as tests do)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stray_processes(marker: str) -> list[int]:
    """Processes whose command line mentions `marker` (this mesh's state directory):
    what a crashed `up` may have left without a pid file."""
    own = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found

"""cgroup v2 directories for local nodes and pods.

Pods get their own cgroup so eBPF cgroup programs can tell their sockets apart from
everyone else's (the node proxy stays in the root cgroup and is never captured).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from mesh.runtime.errors import CgroupV2Missing

_CANDIDATES = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


def cgroup2_root() -> Path:
    """The cgroup v2 mount: /sys/fs/cgroup on pure v2 hosts, .../unified on hybrid ones."""
    for candidate in _CANDIDATES:
        if (candidate / "cgroup.controllers").exists():
            return candidate
    raise CgroupV2Missing()


def cgroup_id(path: Path) -> int:
    """The kernel's cgroup id is the inode number of the cgroup directory."""
    return os.stat(path).st_ino


def procs(path: Path) -> list[int]:
    try:
        text = (path / "cgroup.procs").read_text()
    except FileNotFoundError:
        return []
    return [int(line) for line in text.split()]


def join(path: Path, pid: int = 0) -> None:
    """Move a process (0: the caller) into the cgroup."""
    (path / "cgroup.procs").write_text(str(pid))


def kill_all(path: Path, timeout: float = 5.0) -> None:
    """Kill every process in the cgroup and wait until it is empty."""
    kill_file = path / "cgroup.kill"
    deadline = time.monotonic() + timeout
    while True:
        pids = procs(path)
        if not pids:
            return
        if kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
        else:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)


def remove_tree(path: Path, reap: Callable[[], None] = lambda: None) -> None:
    """Remove a cgroup subtree bottom-up, killing what still runs in it.

    A killed process stays linked to its cgroup until its parent reaps it; `reap` lets
    a caller that spawned some of them collect their exit status meanwhile."""
    if not path.is_dir():
        return
    for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
        remove_tree(child, reap)
    kill_all(path)
    for _ in range(250):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # a process joined meanwhile, or a killed one is not reaped yet
            kill_all(path, timeout=0.5)
            reap()
            time.sleep(0.02)
    path.rmdir()

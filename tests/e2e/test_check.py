"""`ambientctl check` run as a user runs it: passes here, fails with a fix hint when a
prerequisite is really missing (each made missing inside a private mount namespace,
so the host is never touched)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

AMBIENTCTL = str(Path(sys.executable).with_name("ambientctl"))


def run_check(prelude: str = "") -> subprocess.CompletedProcess[str]:
    script = f"{prelude} exec {AMBIENTCTL} check"
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                          text=True, timeout=60)


def test_check_passes_here() -> None:
    out = subprocess.run([AMBIENTCTL, "check", "-o", "json"], capture_output=True, text=True,
                         timeout=60)
    report = json.loads(out.stdout)
    assert out.returncode == 0, out.stdout
    assert report["ok"] is True
    assert {c["name"] for c in report["checks"]} >= {
        "root", "kernel version", "bpf syscall", "cgroup v2", "bpffs", "bcc",
        "kernel headers", "network namespaces"}


def test_check_fails_without_bpffs() -> None:
    out = run_check("umount /sys/fs/bpf &&")
    assert out.returncode == 1
    assert "✗ bpffs" in out.stdout
    assert "fix: mount -t bpf bpf /sys/fs/bpf" in out.stdout


def test_check_fails_without_bcc(tmp_path: Path) -> None:
    bcc_dir = Path("/usr/lib/python3/dist-packages/bcc")
    assert bcc_dir.is_dir() and shutil.which("unshare")
    out = run_check(f"mount --bind {tmp_path} {bcc_dir} &&")
    assert out.returncode == 1
    assert "✗ bcc" in out.stdout
    assert "apt-get install python3-bpfcc" in out.stdout

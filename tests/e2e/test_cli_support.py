"""Running ambientctl as a user does (a subprocess), and a controller started alone.

Holds no tests: shared by tests/e2e/test_cli_*.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.e2e.mesh_harness import free_port
from tests.e2e.waypoint_helpers import stop_process

BIN = Path(sys.executable).parent
AMBIENTCTL = str(BIN / "ambientctl")


def ctl(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AMBIENTCTL, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "NO_COLOR": "1", **(env or {})}, input=input)


@dataclass
class Controller:
    admin_addr: str
    token_file: Path

    def ctl(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return ctl("--admin-addr", self.admin_addr, "--admin-token-file", str(self.token_file),
                   *args, **kw)  # type: ignore[arg-type]


@contextmanager
def controller_alone(tmp: Path) -> Iterator[Controller]:
    admin = f"127.0.0.1:{free_port()}"
    state = tmp / "state"
    log = open(tmp / "controller.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [str(BIN / "ambient-controller"), "--config-dir", str(tmp / "config"),
         "--state-dir", str(state), "--grpc-addr", f"127.0.0.1:{free_port()}",
         "--admin-addr", admin], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://{admin}/v1/status", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log_text = (tmp / "controller.log").read_text()
                raise RuntimeError(f"controller did not start: {log_text}")
            time.sleep(0.1)
        yield Controller(admin, state / "admin.token")
    finally:
        stop_process(proc, grace=10)
        log.close()

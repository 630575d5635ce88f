"""A demo mesh, its traffic, the dashboard process and headless Chromium, for
tests/e2e/test_dashboard.py and test_prometheus.py. Holds no tests.

Everything started here is stopped in a `finally`: the mesh with `ambientctl down`
(which also stops Prometheus and its scrape gateway and removes their data), the
dashboard by its pid, Chromium by its timeout and its profile directory with tmp."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.test_cli_support import AMBIENTCTL, ctl, free_port

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@dataclass
class DemoMesh:
    cluster: str
    up_output: str
    prometheus: str = ""

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return ctl("--cluster", self.cluster, *args, timeout=timeout)

    def traffic(self, count: int = 20) -> None:
        out = subprocess.run([sys.executable, "-m", "ambientctl.demo_traffic", "--cluster",
                              self.cluster, "--count", str(count)],
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr


    def delete_items(self, count: int = 2) -> None:
        out = self.ctl("exec", "demo/frontend-0", "--", sys.executable, "-m",
                       "ambientctl.demo.client", "http://catalog.demo/items", "--method",
                       "DELETE", "--count", str(count))
        assert f'"403": {count}' in out.stdout, out.stdout + out.stderr


@contextmanager
def demo_mesh(observability: bool) -> Iterator[DemoMesh]:
    cluster = "amo" + secrets.token_hex(3)
    extra: list[str] = []
    prometheus = ""
    if observability:
        port = free_port()
        prometheus = f"http://127.0.0.1:{port}"
        extra = ["--observability", "--prometheus-port", str(port),
                 "--metrics-gateway-port", str(free_port())]
    try:
        out = ctl("--cluster", cluster, "up", "--grpc-port", str(free_port()), "--admin-port",
                  str(free_port()), "--timeout", "90", *extra, timeout=400)
        assert out.returncode == 0, out.stdout + out.stderr
        yield DemoMesh(cluster, out.stdout, prometheus)
    finally:
        ctl("--cluster", cluster, "down", timeout=120)


def get_json(url: str, params: dict[str, str] | None = None, timeout: float = 5) -> Any:
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_for(what: str, check: Callable[[], Any], timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@dataclass
class DashboardProcess:
    url: str
    proc: subprocess.Popen[str]

    def state(self) -> dict[str, Any]:
        return dict(get_json(self.url + "api/state"))


@contextmanager
def dashboard(mesh: DemoMesh, *args: str) -> Iterator[DashboardProcess]:
    port = free_port()
    proc = subprocess.Popen([AMBIENTCTL, "--cluster", mesh.cluster, "dashboard", "--port",
                             str(port), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = f"http://127.0.0.1:{port}/"
        assert url in line, line + (proc.stdout.read() if proc.poll() is not None else "")
        wait_for("the dashboard to answer", lambda: get_json(url + "api/state"))
        yield DashboardProcess(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def chromium(url: str, profile: Path, *args: str, timeout: float = 90) -> str:
    """Run headless Chromium once (Debian's /usr/bin/chromium); its stdout."""
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed: run `bash scripts/setup.sh`"
    proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args,
                             url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:  # the browser and every helper process it forked
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, stderr[-2000:]
    return stdout

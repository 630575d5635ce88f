"""What the reliability tests share: a local mesh whose controller takes extra flags,
steady load from inside a pod with every result recorded, and the CI/soak durations.

`AMBIENT_SOAK=1` (`make soak`) selects the long variants; CI runs the short ones."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.runtime import Pod
from tests.e2e.mesh_harness import LocalMesh, wait_for

APPS = Path(__file__).parent / "apps"
LOADGEN = str(APPS / "loadgen.py")
PROBE = str(APPS / "portprobe.py")
HTTP_GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
PY = sys.executable
SOAK = os.environ.get("AMBIENT_SOAK") == "1"


def pick(ci: float, soak: float) -> float:
    """The CI figure, or the soak figure under AMBIENT_SOAK=1."""
    return soak if SOAK else ci


class ReliabilityMesh(LocalMesh):
    """LocalMesh whose controller gets `controller_args` (e.g. --cert-ttl) and can be
    killed and started again on the same ports and state."""

    def __init__(self, cluster: str, nodes: int = 2, controller_args: list[str] | None = None
                 ) -> None:
        super().__init__(cluster, nodes, controller_args=tuple(controller_args or ()))

    def kill(self, name: str) -> None:
        """SIGKILL a mesh process (its whole session), as a crash would."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def pod_pids(self, pod: Pod) -> list[int]:
        return [int(p) for p in (pod.cgroup_path / "cgroup.procs").read_text().split()]


@contextlib.contextmanager
def reliability_mesh(cluster: str, nodes: int = 2, controller_args: list[str] | None = None
                     ) -> Iterator[ReliabilityMesh]:
    mesh = ReliabilityMesh(cluster, nodes, controller_args)
    try:
        yield mesh.start()  # type: ignore[misc]
    except BaseException:
        for name in ("controller", *mesh.node_names):
            print(f"===== {name} log (tail) =====\n{mesh.logs(name)[-6000:]}")
        raise
    finally:
        mesh.close()


@dataclass
class LoadReport:
    """Every request of one load run."""

    name: str
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["ok"]]

    @property
    def success(self) -> float:
        return 100.0 * (self.total - len(self.failed)) / self.total if self.total else 0.0

    @property
    def retried(self) -> int:
        """Requests that needed more than one attempt (client-side retries)."""
        return sum(1 for r in self.results if r["attempts"] > 1 or (not r["ok"] and r["errors"]))

    def errors(self) -> Counter[str]:
        return Counter(e.split(":")[0] if not e.startswith("HTTP") else e[:8]
                       for r in self.results for e in r["errors"])

    def window(self, ok: bool) -> tuple[float, float] | None:
        ts = [r["t"] for r in self.results if r["ok"] == ok]
        return (min(ts), max(ts)) if ts else None

    def timeline(self) -> str:
        """Per second: `.` all ok, digit = failed requests (x for 10+), space = none."""
        if not self.results:
            return ""
        end = int(max(r["t"] for r in self.results)) + 1
        fails = [0] * end
        seen = [0] * end
        for r in self.results:
            seen[int(r["t"])] += 1
            fails[int(r["t"])] += 0 if r["ok"] else 1
        return "".join(("." if not f else str(f) if f < 10 else "x") if n else " "
                       for f, n in zip(fails, seen, strict=True))

    def summary(self) -> str:
        lat = sorted(r["ms"] for r in self.results) or [0.0]
        p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (f"{self.name}: {self.total} requests, {len(self.failed)} failed, success "
                f"{self.success:.2f} %, {self.retried} needed client retries, latency p50 "
                f"{p50:.0f} ms p99 {p99:.0f} ms max {lat[-1]:.0f} ms, attempt errors "
                f"{dict(self.errors())}\n  per second [{self.timeline()}]")


class Load:
    """`loadgen.py` running in a pod; `report()` waits for it and reads every line."""

    def __init__(self, mesh: LocalMesh, pod: Pod, name: str, url: str, *, duration: float,
                 rate: float = 40, workers: int = 4, timeout: float = 2.0, retries: int = 0,
                 retry_gap: float = 0.2, expect: str = "hello from") -> None:
        self.name = name
        self.out = mesh.root / f"load-{name}.jsonl"
        self.duration = duration
        self.proc = mesh.runtime.spawn(pod, [
            PY, LOADGEN, "--url", url, "--out", str(self.out), "--rate", str(rate),
            "--workers", str(workers), "--duration", str(duration), "--timeout", str(timeout),
            "--retries", str(retries), "--retry-gap", str(retry_gap), "--expect", expect],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def report(self) -> LoadReport:
        try:
            _, err = self.proc.communicate(timeout=self.duration + 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        assert self.proc.returncode == 0, f"loadgen {self.name} failed: {err.decode()[-2000:]}"
        lines = self.out.read_text().splitlines()
        return LoadReport(self.name, [json.loads(line) for line in lines if line])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_serving(mesh: LocalMesh, pod: Pod, url: str, expect: str = "hello from",
                 timeout: float = 40) -> None:
    """Until `url` answers from `pod` five times in a row."""
    def ok() -> bool:
        for _ in range(5):
            out = mesh.exec(pod, ["curl", "-sS", "-m", "3", url])
            if out.returncode != 0 or expect not in out.stdout:
                return False
        return True
    wait_for(f"{url} serving", ok, timeout=timeout, interval=0.3)


def probe(mesh: LocalMesh, src: Pod, host: str, ports: list[int], payload: bytes = HTTP_GET,
          timeout: float = 60) -> list[dict[str, Any]]:
    """Knock from inside `src` on each of `host`'s `ports` with `payload` (portprobe.py):
    one record per port of what a raw client saw (refused, reset, closed, data...)."""
    out = mesh.exec(src, [PY, PROBE, payload.hex(), host, *map(str, ports)], timeout=timeout)
    assert out.returncode == 0, out.stderr
    result: list[dict[str, Any]] = json.loads(out.stdout)
    return result

"""`ambient-waypoint --workers 2`: two real waypoint processes on one port.

The real binary with a static snapshot and a plain --listen port (SO_REUSEPORT in each
worker), aiohttp backends on loopback. Requests on fresh connections land on both
workers (per-worker counts on the supervisor's /metrics); the L7 deny, header routing
and retries behave as with one process; a SIGKILLed worker is restarted and counted,
readiness drops meanwhile and returns, and not one denied request reaches the app
while it happens."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format

from mesh.api import config_pb2 as pb
from tests.e2e.waypoint_helpers import (
    WAYPOINT,
    Backend,
    BackendLoop,
    Waypoint,
    answer_name,
    backend,
    echo,
    fail_every,
    free_port,
    host,
    route,
    run_waypoint,
    service,
    stop_process,
    waypoint_snapshot,
)

pytestmark = pytest.mark.e2e


@dataclass
class Mesh:
    wp: Waypoint
    b: dict[str, Backend]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    loop = BackendLoop()
    try:
        b = {
            "v1": loop.add(Backend("v1"), answer_name),
            "v2": loop.add(Backend("v2"), answer_name),
            "flaky": loop.add(Backend("flaky"), fail_every(3)),
            "echo": loop.add(Backend("echo"), echo),
        }
        P = 80
        served = [service("canary", P, [b["v1"].port]), service("flaky", P, [b["flaky"].port]),
                  service("guarded", P, [b["echo"].port]), service("limited", P, [b["echo"].port])]
        others = [service("v1", P, [b["v1"].port]), service("v2", P, [b["v2"].port])]
        routes = [
            route("canary", "canary", [
                pb.RouteRule(backends=[backend("v2")], matches=[pb.RouteMatch(
                    headers=[pb.HeaderMatch(name="x-version", match=pb.StringMatch(
                        type=pb.StringMatch.EXACT, value="v2"))])]),
                pb.RouteRule(backends=[backend("v1")]),
            ]),
            route("flaky", "flaky", [pb.RouteRule(backends=[backend("flaky")], retry=pb.RetryPolicy(
                attempts=2, codes=[503], backoff_ms=5))]),
        ]
        traffic = [pb.TrafficPolicy(namespace="default", name="flaky-budget",
                                    services=["default/flaky"],
                                    retry_budget=pb.RetryBudget(percent=100,
                                                                min_retries_per_second=100)),
                   # 10 requests, then one a minute: no refill within the test.
                   pb.TrafficPolicy(namespace="default", name="rl", services=["default/limited"],
                                    rate_limit=pb.RateLimit(requests_per_unit=1, unit_seconds=60,
                                                            burst=10))]
        authz = [pb.Authorization(
            namespace="default", name="deny-admin", action=pb.DENY,
            targets=[pb.PolicyTarget(kind="Service", namespace="default", name="guarded")],
            rules=[pb.Rule(operations=[pb.Operation(methods=["POST"], paths=["/admin*"])])])]
        snap = waypoint_snapshot(served, others, routes, traffic, authz)
        with run_waypoint(snap, tmp_path_factory.mktemp("wp"), ["--workers", "2"]) as wp:
            yield Mesh(wp, b)
    finally:
        loop.close()


def one_request(wp: Waypoint, method: str, path: str, svc: str,
                headers: dict[str, str] | None = None) -> httpx.Response:
    """On a connection of its own (the kernel picks the worker per connection)."""
    with httpx.Client(base_url=wp.url, timeout=10) as client:
        return client.request(method, path, headers={"host": host(svc), **(headers or {})})


def worker_requests(wp: Waypoint) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^ambient_waypoint_worker_requests_total\{worker="(\d+)"\} (\S+)$', wp.metrics(),
        re.M)}


def worker_pids(wp: Waypoint) -> list[int]:
    out = Path(f"/proc/{wp.proc.pid}/task/{wp.proc.pid}/children").read_text().split()
    return sorted(int(p) for p in out)


def metric(wp: Waypoint, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", wp.metrics(), re.M)
    assert m is not None, name
    return float(m.group(1))


def test_requests_on_fresh_connections_are_served_by_both_workers(mesh: Mesh) -> None:
    assert len(worker_pids(mesh.wp)) == 2
    before = worker_requests(mesh.wp)
    for _ in range(40):
        assert one_request(mesh.wp, "GET", "/", "canary").text == "v1"
    after = worker_requests(mesh.wp)
    served = {w: after[w] - before.get(w, 0) for w in after}
    assert set(served) == {"0", "1"}
    assert sum(served.values()) == 40
    assert min(served.values()) > 0, served  # 2^-39 odds of a false failure


def test_l7_deny_routing_and_retries_hold_on_every_worker(mesh: Mesh) -> None:
    echo_before = mesh.b["echo"].hits["POST /admin/x"]
    outcomes: Counter[str] = Counter()
    for _ in range(20):
        outcomes[f"deny {one_request(mesh.wp, 'POST', '/admin/x', 'guarded').status_code}"] += 1
        outcomes[f"get {one_request(mesh.wp, 'GET', '/admin/x', 'guarded').status_code}"] += 1
        outcomes["v2 " + one_request(mesh.wp, "GET", "/", "canary", {"x-version": "v2"}).text] += 1
        outcomes[f"flaky {one_request(mesh.wp, 'GET', '/', 'flaky').status_code}"] += 1
    assert outcomes == Counter({"deny 403": 20, "get 200": 20, "v2 v2": 20, "flaky 200": 20})
    assert mesh.b["echo"].hits["POST /admin/x"] == echo_before  # never reached the app
    # The flaky backend fails one answer in three: the 200s above took retries, counted
    # by the workers and summed by the supervisor.
    retried = re.findall(r'^ambient_waypoint_retries_total\{.*flaky.*\} (\S+)$',
                         mesh.wp.metrics(), re.M)
    assert retried and float(retried[0]) >= 5, retried


def test_a_killed_worker_is_restarted_and_nothing_passes_unchecked(mesh: Mesh) -> None:
    wp = mesh.wp
    pids = worker_pids(wp)
    restarts = metric(wp, "ambient_waypoint_worker_restarts_total")
    echo_before = mesh.b["echo"].hits["POST /admin/x"]
    stop = threading.Event()
    seen: Counter[str] = Counter()

    def load() -> None:  # denied POSTs and allowed GETs, one connection each
        n = 0
        while not stop.is_set():
            method = "POST" if n % 2 == 0 else "GET"
            try:
                seen[f"{method} {one_request(wp, method, '/admin/x', 'guarded').status_code}"] += 1
            except httpx.HTTPError as e:
                seen[f"{method} {type(e).__name__}"] += 1
            n += 1

    t = threading.Thread(target=load)
    t.start()
    try:
        time.sleep(0.5)
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        # Readiness drops while a worker is missing (its replacement starts in ~1 s).
        saw_not_ready = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = httpx.get(f"http://127.0.0.1:{wp.admin_port}/healthz/ready", timeout=5)
            if r.status_code == 503:
                saw_not_ready = True
                assert "worker" in r.text
                break
            time.sleep(0.01)
        assert saw_not_ready
        deadline = time.monotonic() + 20
        while httpx.get(f"http://127.0.0.1:{wp.admin_port}/healthz/ready",
                        timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "not ready again after 20 s"
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(30)
    new_pids = worker_pids(wp)
    assert len(new_pids) == 2 and victim not in new_pids
    assert metric(wp, "ambient_waypoint_worker_restarts_total") == restarts + 1
    assert mesh.b["echo"].hits["POST /admin/x"] == echo_before, seen
    assert seen["POST 200"] == 0 and seen["POST 403"] > 0 and seen["GET 200"] > 0, seen
    # Both workers serve again after the restart.
    before = worker_requests(wp)
    for _ in range(40):
        assert one_request(wp, "GET", "/", "canary").status_code == 200
    after = worker_requests(wp)
    assert min(after[w] - before.get(w, 0) for w in after) > 0


def test_a_taken_port_fails_the_start_naming_it(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        snap = tmp_path / "snap.json"
        snap.write_text("{}")
        out = subprocess.run(
            [WAYPOINT,
             "--name", "w", "--snapshot", str(snap), "--listen", f"127.0.0.1:{port}",
             "--metrics-addr", f"127.0.0.1:{free_port()}", "--workers", "2"],
            capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "cannot bind a waypoint port" in out.stderr, out.stderr


def test_workers_without_a_certificate_refuse_hbone_and_serve_nothing(tmp_path: Path) -> None:
    """The CA is unreachable: no worker gets a certificate, so none listens on the
    HBONE port (the supervisor only holds it: connections are refused), the plain
    listener has no config to route with (404), and readiness says why, per worker."""
    token = tmp_path / "token"
    token.write_text("not-a-real-token")
    with socket.socket() as closed:  # a port nobody listens on: the "controller"
        closed.bind(("127.0.0.1", 0))
        controller = closed.getsockname()[1]
    hbone, plain, admin = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [WAYPOINT, "--name", "w", "--namespace", "default",
         "--controller", f"127.0.0.1:{controller}", "--token-file", str(token),
         "--hbone-addr", f"127.0.0.1:{hbone}", "--listen", f"127.0.0.1:{plain}",
         "--metrics-addr", f"127.0.0.1:{admin}", "--workers", "2", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        r = None
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{admin}/healthz/ready", timeout=2)
                if r.text.count("no certificate yet") == 2:  # both workers started
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"readiness never named both workers: {r}"
            time.sleep(0.1)
        assert r.status_code == 503
        assert "worker 0: no certificate yet" in r.text and "worker 1: no cert" in r.text
        time.sleep(1.0)  # well past the workers' start
        with pytest.raises(ConnectionRefusedError), socket.create_connection(
                ("127.0.0.1", hbone), timeout=2):
            pass
        resp = httpx.get(f"http://127.0.0.1:{plain}/", headers={"host": "web"}, timeout=5)
        assert resp.status_code == 404  # no config: no service, nothing forwarded
        assert proc.poll() is None
    finally:
        stop_process(proc)


def test_a_local_rate_limit_holds_in_total_across_workers(mesh: Mesh) -> None:
    """Each worker enforces half of the policy's burst: together they admit at most
    the configured 10, not 10 each (an unshared bucket per process would)."""
    codes = Counter(one_request(mesh.wp, "GET", "/", "limited").status_code for _ in range(40))
    assert set(codes) <= {200, 429}, codes
    assert 0 < codes[200] <= 10, codes


def test_workers_die_with_their_supervisor(tmp_path: Path) -> None:
    """SIGKILL to the supervisor (no chance to stop its workers): the workers get
    SIGTERM from the kernel (PR_SET_PDEATHSIG) and exit, so no worker keeps serving
    without the supervisor's readiness and restart checks, and the port is free."""
    snap = tmp_path / "snap.json"
    snap.write_text(json_format.MessageToJson(waypoint_snapshot(
        [service("web", 80, [free_port()])], [], [], [], [])))
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [WAYPOINT, "--name", "w", "--snapshot", str(snap), "--listen", f"127.0.0.1:{port}",
         "--metrics-addr", f"127.0.0.1:{admin}", "--workers", "2", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{admin}/healthz/ready", timeout=2
                             ).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "not ready in 20 s"
            time.sleep(0.1)
        children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children"
                                         ).read_text().split()]
        assert len(children) == 2
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{c}").exists() and "Z" not in
                  Path(f"/proc/{c}/stat").read_text().rsplit(")", 1)[1].split()[0]
                  for c in children):
            assert time.monotonic() < deadline, "a worker outlived its supervisor"
            time.sleep(0.05)
        # The kernel may finish closing a dead worker's listener a moment after the
        # process is a zombie (deferred fput): meanwhile a handshake can complete and
        # is then reset, never served. Refused soon after.
        deadline = time.monotonic() + 5
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                    c.settimeout(2)
                    with contextlib.suppress(ConnectionResetError):
                        assert c.recv(1) == b""  # reset or closed: nobody serves it
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "the port still takes connections"
            time.sleep(0.05)
    finally:
        stop_process(proc)

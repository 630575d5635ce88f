"""A two-worker waypoint in the real local mesh (netns, eBPF capture, HBONE, the CA).

The Gateway carries ambientmesh.io/waypoint-workers: "2": the waypoint pod runs a
supervisor and two workers, each with its own certificate from the controller's CA,
terminating HBONE on the same port. While a client sends DELETEs (denied by L7 policy)
and GETs as fast as it can, the worker that served the most is SIGKILLed: it is
restarted and counted, readiness drops and returns, and not one DELETE reaches the
app."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.mesh_harness import LocalMesh, local_mesh, wait_for
from tests.topologies import PY, SLEEP, deny_methods, documents, namespace, pod, service

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

NS = "shop"
APP = str(Path(__file__).parent / "apps" / "method_log.py")
GATEWAY = f"""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: {NS}
  annotations:
    ambientmesh.io/waypoint-workers: "2"
    ambientmesh.io/waypoint-hbone-max-streams: "4"
spec:
  gatewayClassName: ambient-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
"""
CONFIG = documents(
    namespace(NS),
    pod("catalog-0", NS, "node-2", [PY, APP, "8080"], "catalog", "app: catalog"),
    pod("client", NS, "node-1", SLEEP, "client"),
    GATEWAY,
    service("catalog", NS, "app: catalog", use_waypoint="waypoint"),
    deny_methods("catalog-no-delete", NS, "catalog", ["DELETE"]),
)

# In the client pod: argv[3] threads, one request per connection, four DELETEs for
# each GET, for argv[1] seconds. Prints the outcome counts as JSON.
LOAD = """
import http.client, json, sys, threading, time
end = time.monotonic() + float(sys.argv[1])
counts, lock = {}, threading.Lock()
def run():
    n = 0
    while time.monotonic() < end:
        method = "GET" if n % 5 == 4 else "DELETE"
        try:
            c = http.client.HTTPConnection(sys.argv[2], 80, timeout=3)
            c.request(method, "/items/%d" % n)
            r = c.getresponse(); r.read(); c.close()
            key = "%s %d" % (method, r.status)
        except Exception as e:
            key = "%s %s" % (method, type(e).__name__)
        with lock:
            counts[key] = counts.get(key, 0) + 1
        n += 1
threads = [threading.Thread(target=run) for _ in range(int(sys.argv[3]))]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(counts))
"""


def app_requests(mesh: LocalMesh, method: str) -> int:
    logs = sorted((mesh.root / "nodes").glob(f"*/logs/{NS}.catalog-0.*.log"))
    assert logs, "the app's log was not found: test is broken"
    return sum(p.read_text(errors="replace").count(f"REQUEST {method} ") for p in logs)


def workers(mesh: LocalMesh) -> dict[int, int]:
    """worker index -> pid, from the processes of the waypoint pod."""
    wp = mesh.runtime.get_pod(NS, "waypoint")
    out = {}
    for pid in (wp.cgroup_path / "cgroup.procs").read_text().split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--worker-index" in argv:
            out[int(argv[argv.index(b"--worker-index") + 1])] = int(pid)
    return out


def admin(mesh: LocalMesh, path: str) -> tuple[int, str]:
    wp = mesh.runtime.get_pod(NS, "waypoint")
    out = mesh.exec(wp, ["curl", "-sS", "-m", "3", "-w", "\n%{http_code}",
                         f"http://{wp.ip}:15020{path}"], timeout=10)
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_two_workers_serve_hbone_and_a_killed_one_lets_nothing_through() -> None:
    with local_mesh("amw" + secrets.token_hex(2)) as mesh:
        mesh.apply(CONFIG)
        client = mesh.pod(NS, "client", enrolled=True)
        mesh.pod(NS, "catalog-0", enrolled=True)
        mesh.pod(NS, "waypoint")

        def status(method: str) -> str:
            out = mesh.exec(client, ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w",
                                     "%{http_code}", "-X", method, f"http://catalog.{NS}/x"])
            return out.stdout.strip()

        wait_for("the waypoint enforces catalog-no-delete", lambda: status("DELETE") == "403",
                 timeout=60)
        assert status("GET") == "200"
        wait_for("two workers", lambda: len(workers(mesh)) == 2, timeout=30)
        wait_for("the waypoint ready", lambda: admin(mesh, "/healthz/ready")[0] == 200,
                 timeout=30)

        result: dict[str, str] = {}
        duration = 14.0

        def load() -> None:
            out = mesh.exec(client, [PY, "-c", LOAD, str(duration), f"catalog.{NS}", "6"],
                            timeout=duration + 30)
            result["out"], result["err"] = out.stdout, out.stderr

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(3.0)
        text = admin(mesh, "/metrics")[1]
        served = {i: metric(text, "ambient_waypoint_worker_requests_total",
                            f'{{worker="{i}"}}') for i in (0, 1)}
        busiest = max(served, key=lambda i: served[i])
        assert served[busiest] > 0, text[-2000:]
        before = workers(mesh)
        os.kill(before[busiest], signal.SIGKILL)
        saw_503 = ""
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and not saw_503:
            code, body = admin(mesh, "/healthz/ready")
            if code == 503:
                saw_503 = body
        assert f"worker {busiest}" in saw_503, "readiness never dropped"
        wait_for("the worker restarted",
                 lambda: workers(mesh).get(busiest) not in (None, before[busiest]), timeout=20)
        wait_for("ready again", lambda: admin(mesh, "/healthz/ready")[0] == 200, timeout=30)
        loader.join(duration + 40)
        assert not loader.is_alive()
        counts: dict[str, int] = json.loads(result["out"].strip().splitlines()[-1])
        print(f"client outcomes: {counts}; per worker before the kill: {served}")

        assert sum(n for k, n in counts.items() if k.startswith("DELETE")) >= 100, counts
        assert counts.get("DELETE 403", 0) > 0 and counts.get("GET 200", 0) > 0, counts
        assert "DELETE 200" not in counts
        assert app_requests(mesh, "DELETE") == 0  # the app's own record
        text = admin(mesh, "/metrics")[1]
        assert metric(text, "ambient_waypoint_worker_restarts_total") == 1
        assert metric(text, "ambient_waypoint_workers_running") == 2
        # Both workers hold a certificate of their own and serve after the restart.
        assert status("DELETE") == "403" and status("GET") == "200"

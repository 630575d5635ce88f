"""A service bound to a waypoint never reaches its pods around it (issue 20 finding 3).

Real local mesh: controller, two node agents, the waypoint pod, an app that records
every request it receives, and the L7 policy `catalog-no-delete` (DENY DELETE, as in
the demo manifests). While a client sends DELETEs as fast as it can, the waypoint's
process is SIGKILLed and restarted by its node: meanwhile the controller withdraws
its address and the node proxy used to send straight to the app. Now: not one DELETE
reaches the app, refusals are reset, logged with the waypoint's name and counted."""

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

from tests.e2e.mesh_harness import LocalMesh, local_mesh, metric_sum, wait_for
from tests.topologies import PY, SLEEP, deny_methods, documents, namespace, pod, service, waypoint

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

NS = "shop"
APP = str(Path(__file__).parent / "apps" / "method_log.py")
CONFIG = documents(
    namespace(NS),
    pod("catalog-0", NS, "node-2", [PY, APP, "8080"], "catalog", "app: catalog"),
    pod("client", NS, "node-1", SLEEP, "client"),
    waypoint(NS),
    service("catalog", NS, "app: catalog", use_waypoint="waypoint"),
    deny_methods("catalog-no-delete", NS, "catalog", ["DELETE"]),
)

# Runs in the client pod: one request per connection, as fast as possible, for
# argv[1] seconds; four DELETEs for each GET. Prints the outcome counts as JSON.
LOAD = """
import http.client, json, sys, time
end = time.monotonic() + float(sys.argv[1])
counts, n = {}, 0
while time.monotonic() < end:
    method = "GET" if n % 5 == 4 else "DELETE"
    try:
        c = http.client.HTTPConnection(sys.argv[2], 80, timeout=3)
        c.request(method, "/items/%d" % n)
        r = c.getresponse(); r.read(); c.close()
        key = "%s %d" % (method, r.status)
    except Exception as e:
        key = "%s %s" % (method, type(e).__name__)
    counts[key] = counts.get(key, 0) + 1
    n += 1
print(json.dumps(counts))
"""


def app_requests(mesh: LocalMesh, method: str) -> int:
    logs = sorted((mesh.root / "nodes").glob(f"*/logs/{NS}.catalog-0.*.log"))
    assert logs, "the app's log was not found: test is broken"
    return sum(p.read_text(errors="replace").count(f"REQUEST {method} ") for p in logs)


def waypoint_pids(mesh: LocalMesh) -> set[int]:
    wp = mesh.runtime.get_pod(NS, "waypoint")
    procs = (wp.cgroup_path / "cgroup.procs").read_text().split()
    return {int(p) for p in procs}


def test_deletes_never_reach_the_app_across_a_waypoint_kill_and_restart() -> None:
    with local_mesh("amf" + secrets.token_hex(2)) as mesh:
        mesh.apply(CONFIG)
        client = mesh.pod(NS, "client", enrolled=True)
        mesh.pod(NS, "catalog-0", enrolled=True)
        mesh.pod(NS, "waypoint")

        def status(method: str) -> str:
            out = mesh.exec(client, ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w",
                                     "%{http_code}", "-X", method, f"http://catalog.{NS}/x"])
            return out.stdout.strip()

        # Only the waypoint answers 403: its L7 policy is in force (a 200 could come
        # from the app itself, reached around a waypoint still starting).
        wait_for("the waypoint enforces catalog-no-delete", lambda: status("DELETE") == "403",
                 timeout=60)
        assert status("GET") == "200"
        assert app_requests(mesh, "DELETE") == 0, "a DELETE went around the starting waypoint"

        result: dict[str, object] = {}
        duration = 14.0

        def load() -> None:
            out = mesh.exec(client, [PY, "-c", LOAD, str(duration), f"catalog.{NS}"],
                            timeout=duration + 30)
            result["out"], result["err"] = out.stdout, out.stderr

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(2.0)
        old = waypoint_pids(mesh)
        assert old, "no waypoint process to kill: test is broken"
        for pid in old:  # processes of the waypoint pod this test's mesh started
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for("the waypoint restarted", lambda: waypoint_pids(mesh) - old, timeout=20)
        print(f"waypoint SIGKILLed at +2 s of {duration:.0f} s of load, its process back "
              f"{time.monotonic() - killed_at:.1f} s later")
        loader.join(duration + 40)
        assert not loader.is_alive()
        counts: dict[str, int] = json.loads(str(result["out"]).strip().splitlines()[-1])
        print(f"client outcomes: {counts}")

        deletes = sum(n for k, n in counts.items() if k.startswith("DELETE"))
        refused = sum(n for k, n in counts.items()
                      if k.startswith("DELETE") and not k.endswith(" 403"))
        assert deletes >= 200, f"too few DELETEs to mean anything: {counts}"
        assert refused > 0, f"the kill went unnoticed by the client: test is broken: {counts}"
        assert counts.get("DELETE 403", 0) > 0 and counts.get("GET 200", 0) > 0, counts
        # The app's own record: not one DELETE reached it, denied or refused alike.
        assert app_requests(mesh, "DELETE") == 0
        assert "DELETE 200" not in counts

        # Refusals say why, naming the waypoint, and are counted.
        agent_log = mesh.logs("node-1")
        named = [line for line in agent_log.splitlines() if '"log":"access"' in line
                 and '"outcome":"error"' in line and f"waypoint {NS}/waypoint" in line]
        assert named, "no access log record names the unavailable waypoint"
        assert all(re.search(r"waypoint shop/waypoint for service shop/catalog is "
                             r"unavailable \(", line) for line in named), named[:3]
        print(f"{len(named)} refusals logged; first: {named[0]}")
        text = mesh.metrics("node-1")
        assert metric_sum(text, "ambient_waypoint_unavailable_total",
                          waypoint=f"{NS}/waypoint") > 0, text[-3000:]
        assert metric_sum(text, "ambient_connections_refused_total",
                          cause="waypoint_unavailable", direction="outbound") > 0


GATEWAY = waypoint(NS)


def test_a_deleted_waypoint_gateway_still_binds_its_service() -> None:
    """use-waypoint names a Gateway that no longer exists (deleted, or a typo): the
    service's traffic is refused, as Istio does, instead of reaching its pods."""
    with local_mesh("amg" + secrets.token_hex(2)) as mesh:
        mesh.apply(CONFIG)
        client = mesh.pod(NS, "client", enrolled=True)
        mesh.pod(NS, "catalog-0", enrolled=True)

        def curl(method: str) -> tuple[int, str]:
            out = mesh.exec(client, ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w",
                                     "%{http_code}", "-X", method, f"http://catalog.{NS}/x"])
            return out.returncode, out.stdout.strip()

        wait_for("the waypoint enforces catalog-no-delete", lambda: curl("DELETE")[1] == "403",
                 timeout=60)
        assert "Gateway" in GATEWAY and "waypoint" in GATEWAY
        mesh.delete(GATEWAY)
        wait_for("the waypoint pod is gone",
                 lambda: not any(p.name == "waypoint" for p in mesh.runtime.list_pods()),
                 timeout=30)
        time.sleep(1.0)  # the controller's push after the deletion has landed
        outcomes = [curl(m) for m in ("DELETE", "GET") * 10]
        print(f"after the Gateway was deleted: {sorted(set(outcomes))}")
        assert all(code != 0 for code, _ in outcomes), outcomes  # reset: curl fails
        assert app_requests(mesh, "DELETE") == 0 and app_requests(mesh, "GET") == 0
        text = mesh.metrics("node-1")
        assert metric_sum(text, "ambient_waypoint_unavailable_total", waypoint=f"{NS}/waypoint") > 0
        assert "no waypoint Gateway of that name exists" in mesh.logs("node-1")

"""The destination side never lets a waypoint be skipped (DESIGN §7b, issue 20 finding 3).

Real local mesh: controller, two node agents, the waypoint pod, an app that records
every request it receives (`REQUEST <METHOD> <path>`), and the waypoint's L7 policy
`catalog-no-delete` (DENY DELETE). The app's pod is bound to the waypoint itself
(`ambientmesh.io/use-waypoint` on the pod) and PERMISSIVE. Then, with DELETEs:
  - a pod outside the mesh connects in plaintext straight to the pod's IPs (v4 + v6);
  - an enrolled pod of another namespace connects to the pod's IP through its node
    proxy (which sends it to the waypoint), and to a second Service selecting the pod
    that has no waypoint (its node proxy goes straight to the pod over HBONE with its
    own identity: the way around the waypoint that the source side cannot close);
  - the same from an enrolled pod of the pod's own namespace.
None reaches the app (its own log); the destination's node proxy refuses them (RST /
401), logs them "denied" naming the waypoint and counts them. Through the waypoint,
GET works and DELETE is the waypoint's 403. On the code before this change, the
plaintext and the second-Service DELETEs reached the app."""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.runtime import Pod
from tests.e2e.mesh_harness import LocalMesh, local_mesh, wait_for
from tests.reliability.harness import probe
from tests.topologies import PY, SLEEP, deny_methods, documents, namespace, pod, service, waypoint

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

NS = "shop"
APP = str(Path(__file__).parents[1] / "e2e" / "apps" / "method_log.py")
WAYPOINT_ID = f"spiffe://cluster.local/ns/{NS}/sa/waypoint"
BOUND = "app: catalog, ambientmesh.io/use-waypoint: waypoint"

CONFIG = documents(
    namespace(NS),
    namespace("other"),
    namespace("legacy", ambient=False),
    pod("catalog-0", NS, "node-2", [PY, APP, "8080"], "catalog", BOUND),
    pod("client", NS, "node-1", SLEEP, "client"),
    pod("intruder", "other", "node-1", SLEEP, "intruder"),
    pod("outsider", "legacy", "node-1", SLEEP),
    waypoint(NS, hbone_listener=False),
    service("catalog", NS, "app: catalog", use_waypoint="waypoint"),
    # Anyone who may create a Service in the namespace can select the pod with one
    # that has no waypoint: the source's node proxy then goes straight to the pod.
    service("catalog-direct", NS, "app: catalog"),
    deny_methods("catalog-no-delete", NS, "catalog", ["DELETE"]),
)


def delete(path: str) -> bytes:
    return f"DELETE {path} HTTP/1.1\r\nHost: catalog.{NS}\r\nConnection: close\r\n\r\n".encode()


@pytest.fixture(scope="module")
def mesh() -> Iterator[LocalMesh]:
    with local_mesh("amb" + secrets.token_hex(2)) as m:
        m.apply(CONFIG)
        client = m.pod(NS, "client", enrolled=True)
        m.pod(NS, "catalog-0", enrolled=True)
        m.pod("other", "intruder", enrolled=True)
        m.pod("legacy", "outsider", enrolled=False)
        m.pod(NS, "waypoint")
        # Only the waypoint answers 403: its L7 policy is in force.
        wait_for("the waypoint enforces catalog-no-delete",
                 lambda: curl(m, client, "DELETE", f"http://catalog.{NS}/warmup") == "403",
                 timeout=60)
        yield m


def curl(mesh: LocalMesh, src: Pod, method: str, url: str) -> str:
    """The HTTP status, or curl's exit code as "curl <n>" when no answer came."""
    out = mesh.exec(src, ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                          "-X", method, url])
    return out.stdout.strip() if out.returncode == 0 else f"curl {out.returncode}"


def app_requests(mesh: LocalMesh) -> Counter[str]:
    logs = sorted((mesh.root / "nodes").glob(f"*/logs/{NS}.catalog-0.*.log"))
    assert logs, "the app's log was not found: test is broken"
    seen: Counter[str] = Counter()
    for p in logs:
        for line in p.read_text(errors="replace").splitlines():
            if line.startswith("REQUEST "):
                seen[line.split()[1]] += 1
    return seen


def refusals(text: str, direction: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ambient_connections_refused_total{")
               and 'cause="waypoint_bypassed"' in line and f'direction="{direction}"' in line)


def denied_records(mesh: LocalMesh, node: str) -> list[dict[str, Any]]:
    out = []
    for line in mesh.logs(node).splitlines():
        if line.startswith('{"log":"access"') and "bypassed waypoint" in line:
            out.append(json.loads(line))
    return out


def test_nothing_reaches_a_bound_pod_around_its_waypoint(mesh: LocalMesh) -> None:
    client = mesh.runtime.get_pod(NS, "client")
    intruder = mesh.runtime.get_pod("other", "intruder")
    outsider = mesh.runtime.get_pod("legacy", "outsider")
    catalog = mesh.runtime.get_pod(NS, "catalog-0")

    # Through the waypoint: allowed requests work, DELETE is the waypoint's 403.
    assert curl(mesh, client, "GET", f"http://catalog.{NS}/items") == "200"
    assert curl(mesh, intruder, "GET", f"http://catalog.{NS}/items") == "200"
    assert curl(mesh, intruder, "DELETE", f"http://catalog.{NS}/items/1") == "403"
    gets_before = app_requests(mesh)["GET"]
    assert gets_before >= 2, app_requests(mesh)

    outcomes: Counter[str] = Counter()
    # 1. Outside the mesh, plaintext straight to the pod (PERMISSIVE): v4 and v6.
    for host in (str(catalog.ip), str(catalog.ip6)):
        for r in probe(mesh, outsider, host, [8080] * 20, delete("/plaintext")):
            outcomes[f"outsider plaintext -> {r['outcome']}"] += 1
            assert "reached the app" not in r["data"], r
    # 2. Enrolled pods, via their node proxy: to the pod's IP (the node proxy sends it
    #    to the waypoint) and to the Service without a waypoint (straight to the pod).
    for src, name in ((intruder, "intruder"), (client, "client")):
        for url in (f"http://{catalog.ip}:8080/by-ip", f"http://catalog-direct.{NS}/direct"):
            for _ in range(5):
                status = curl(mesh, src, "DELETE", url)
                outcomes[f"{name} {url.split('/')[2]} -> {status}"] += 1
                assert status != "200", f"{name}: DELETE {url} answered 200"
    print(f"outcomes: {dict(outcomes)}")

    # The app's own record: not one DELETE, and no GET beyond those through the waypoint.
    seen = app_requests(mesh)
    assert seen["DELETE"] == 0, f"DELETEs reached the app around its waypoint: {seen}"
    assert seen["GET"] == gets_before, seen

    # The destination's node proxy said why, naming the waypoint, and counted it.
    records = denied_records(mesh, "node-2")
    print(f"{len(records)} refusals logged on node-2; e.g. {records[:1]}")
    plaintext = [r for r in records if r["direction"] == "inbound_plaintext"]
    hbone = [r for r in records if r["direction"] == "inbound"]
    assert len(plaintext) >= 40, Counter(r["direction"] for r in records)
    assert hbone, "no HBONE refusal: the second Service did not go straight to the pod"
    assert all(r["outcome"] == "denied" for r in records)
    assert all(f"bypassed waypoint {NS}/waypoint" in r["reason"] for r in records)
    assert {r["source_identity"] for r in hbone} <= {
        "spiffe://cluster.local/ns/other/sa/intruder", f"spiffe://cluster.local/ns/{NS}/sa/client"}
    assert any("other/sa/intruder" in r["source_identity"] for r in hbone)
    text = mesh.metrics("node-2")
    assert refusals(text, "inbound_plaintext") >= 40
    assert refusals(text, "inbound") >= len(hbone) > 0


def test_the_waypoints_own_hops_still_pass(mesh: LocalMesh) -> None:
    """The waypoint's connections to the bound pod carry its identity: accepted and
    relayed (counted as opened at the destination with the waypoint as principal;
    the waypoint keeps them open for reuse, so no access-log line is written yet)."""
    client = mesh.runtime.get_pod(NS, "client")
    before = opened_from_waypoint(mesh.metrics("node-2"))
    for i in range(10):
        assert curl(mesh, client, "GET", f"http://catalog.{NS}/ok/{i}") == "200"
    assert app_requests(mesh)["GET"] >= 10
    assert opened_from_waypoint(mesh.metrics("node-2")) >= max(before, 1)
    denied = [r for r in denied_records(mesh, "node-2") if r["source_identity"] == WAYPOINT_ID]
    assert denied == []


def opened_from_waypoint(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("istio_tcp_connections_opened_total{")
               and 'reporter="destination"' in line
               and f'source_principal="{WAYPOINT_ID}"' in line)

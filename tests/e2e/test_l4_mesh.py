"""The L4 data path end to end: real controller and node agents, real pods, curl."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.mesh_harness import LocalMesh, local_mesh, metric_sum, wait_for
from tests.topologies import SERVE, SLEEP, documents, namespace, pod, service

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

TOPOLOGY = documents(
    namespace("demo"),
    namespace("legacy", ambient=False),
    pod("server-1", "demo", "node-1", SERVE, "server", "app: server"),
    pod("server-2", "demo", "node-2", SERVE, "server", "app: server"),
    pod("client", "demo", "node-1", SLEEP, "client"),
    pod("outsider", "legacy", "node-2", SLEEP),
    service("server", "demo", "app: server"),
)


@pytest.fixture(scope="module")
def mesh() -> Iterator[LocalMesh]:
    import secrets

    with local_mesh("ame" + secrets.token_hex(2)) as m:
        m.apply(TOPOLOGY)
        yield m


def curl(mesh: LocalMesh, ns: str, name: str, url: str) -> str:
    client = mesh.pod(ns, name)
    out = mesh.exec(client, ["curl", "-sS", "-m", "5", url])
    assert out.returncode == 0, f"curl {url} failed: {out.stderr}"
    return out.stdout


def test_service_reached_over_mtls_on_both_nodes(mesh: LocalMesh) -> None:
    mesh.pod("demo", "server-1", enrolled=True)
    mesh.pod("demo", "server-2", enrolled=True)
    mesh.pod("demo", "client", enrolled=True)
    def answers() -> set[str]:
        return {curl(mesh, "demo", "client", "http://server.demo/").strip() for _ in range(6)}

    # The servers start at their own pace; then round robin answers from both nodes.
    wait_for("both endpoints answering", lambda: answers() == {
        "hello from server-1", "hello from server-2"}, timeout=30)
    metrics = mesh.metrics("node-1")
    assert 'connection_security_policy="mutual_tls"' in metrics
    assert 'reporter="source"' in metrics


def apply_ok(mesh: LocalMesh, text: str) -> None:
    result = mesh.apply(text)
    assert result, result


def test_only_tls_crosses_the_node_link(mesh: LocalMesh) -> None:
    """A capture on the fabric between the nodes sees HBONE (15008) and no HTTP bytes."""
    mesh.pod("demo", "server-2", enrolled=True)
    capture = f"/tmp/{mesh.cluster}-fabric.pcap"
    dump = mesh.runtime.fabric_netns
    tcpdump = subprocess.Popen(["ip", "netns", "exec", dump, "tcpdump", "-i", "any",
                                "--immediate-mode", "-U", "-s", "0", "-w", capture, "tcp"],
                               stderr=subprocess.PIPE)
    try:
        assert tcpdump.stderr is not None
        started = b""
        while b"listening" not in started:  # "listening on any ...": capture is live
            line = tcpdump.stderr.readline()
            assert line, started
            started += line
        server_2 = mesh.runtime.get_pod("demo", "server-2")
        for _ in range(3):
            assert curl(mesh, "demo", "client", f"http://{server_2.ip}:8080/") == \
                "hello from server-2\n"
        time.sleep(0.5)
    finally:
        tcpdump.terminate()
        err = started + tcpdump.communicate(timeout=10)[1]
    try:
        text = subprocess.run(["tcpdump", "-r", capture, "-nn", "-A"], capture_output=True,
                              text=True, errors="replace").stdout
    finally:
        Path(capture).unlink(missing_ok=True)
    assert ".15008:" in text or ".15008 " in text, f"no HBONE traffic captured: {err!r}"
    assert "GET / HTTP" not in text and "hello from" not in text, "plaintext on the wire"


def test_strict_refuses_plaintext_permissive_allows_it(mesh: LocalMesh) -> None:
    server_1 = mesh.pod("demo", "server-1", enrolled=True)
    outsider = mesh.pod("legacy", "outsider", enrolled=False)
    url = f"http://{server_1.ip}:8080/"
    ok = mesh.exec(outsider, ["curl", "-sS", "-m", "5", url])
    assert ok.returncode == 0 and ok.stdout == "hello from server-1\n", ok.stderr
    assert 'connection_security_policy="none"' in mesh.metrics(server_1.node)
    strict = """
apiVersion: ambientmesh.io/v1alpha1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: demo
spec:
  mtls:
    mode: STRICT
"""
    apply_ok(mesh, strict)
    try:
        wait_for("STRICT in force", lambda: mesh.exec(
            outsider, ["curl", "-sS", "-m", "3", url]).returncode != 0)
        refused = mesh.exec(outsider, ["curl", "-sS", "-m", "3", url])
        assert refused.returncode in (7, 52, 56), refused.stderr
        # mesh traffic still flows
        assert curl(mesh, "demo", "client", url) == "hello from server-1\n"
        assert "STRICT mTLS: plaintext refused" in mesh.logs(server_1.node)
    finally:
        mesh.delete(strict)
    wait_for("PERMISSIVE again", lambda: mesh.exec(
        outsider, ["curl", "-sS", "-m", "3", url]).returncode == 0)


def test_deny_from_namespace_resets_and_names_the_policy(mesh: LocalMesh) -> None:
    apply_ok(mesh, """
apiVersion: v1
kind: Namespace
metadata:
  name: other
  annotations:
    ambientmesh.io/dataplane-mode: ambient
---
""" + pod("intruder", "other", "node-2", ["sleep", "infinity"], "intruder"))
    intruder = mesh.pod("other", "intruder", enrolled=True)
    deny = """
apiVersion: ambientmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: deny-other
  namespace: demo
spec:
  selector:
    matchLabels:
      app: server
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["other"]
"""
    url = "http://server.demo/"
    wait_for("intruder reaches server first", lambda: mesh.exec(
        intruder, ["curl", "-sS", "-m", "3", url]).returncode == 0)
    apply_ok(mesh, deny)
    try:
        wait_for("DENY in force", lambda: mesh.exec(
            intruder, ["curl", "-sS", "-m", "3", url]).returncode != 0)
        denied = mesh.exec(intruder, ["curl", "-sS", "-m", "3", url])
        # The proxy resets the app's (already accepted, local) connection: curl sees
        # the RST either as a reset or, if it comes before curl looks, as a refusal.
        assert denied.returncode in (7, 56), denied.stderr
        assert curl(mesh, "demo", "client", url).startswith("hello from server-")
        logs = mesh.logs("node-1") + mesh.logs("node-2")
        assert '"outcome":"denied"' in logs and '"policy":"demo/deny-other"' in logs
    finally:
        mesh.delete(deny)


def test_metrics_count_the_bytes_and_connections(mesh: LocalMesh) -> None:
    apply_ok(mesh, pod("meter", "demo", "node-1", ["sleep", "infinity"], "meter"))
    meter = mesh.pod("demo", "meter", enrolled=True)
    wait_for("meter reaches server", lambda: mesh.exec(
        meter, ["curl", "-sS", "-m", "3", "http://server.demo/"]).returncode == 0)
    sel = {"reporter": "source", "source_workload": "meter"}

    def settled() -> str | None:  # every connection opened so far is also closed
        text = mesh.metrics("node-1")
        opened = metric_sum(text, "istio_tcp_connections_opened_total", **sel)
        return text if opened and opened == metric_sum(
            text, "istio_tcp_connections_closed_total", **sel) else None
    before = wait_for("warm-up connection closed", settled)
    base = {m: metric_sum(before, m, **sel) for m in (
        "istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total",
        "istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total")}
    bodies = sent_resp = 0
    for size in (1000, 50_000, 200_000):
        out = mesh.exec(meter, ["sh", "-c",
                                f"head -c {size} /dev/zero | curl -sS -m 10 -o /dev/null "
                                "--data-binary @- -H 'Content-Type: application/octet-stream' "
                                "-w '%{size_request} %{size_upload} %{size_header} "
                                "%{size_download}' http://server.demo/"])
        assert out.returncode == 0, out.stderr
        _, up, resp_h, down = map(int, out.stdout.split())
        assert up == size and down == size
        bodies += size
        sent_resp += resp_h + down

    after = wait_for("3 more connections closed", lambda: (text := settled()) and metric_sum(
        text, "istio_tcp_connections_closed_total", **sel) - base[
        "istio_tcp_connections_closed_total"] == 3 and text)
    got_req = metric_sum(after, "istio_tcp_received_bytes_total", **sel) - \
        base["istio_tcp_received_bytes_total"]
    got_resp = metric_sum(after, "istio_tcp_sent_bytes_total", **sel) - \
        base["istio_tcp_sent_bytes_total"]
    opened = metric_sum(after, "istio_tcp_connections_opened_total", **sel) - \
        base["istio_tcp_connections_opened_total"]
    print(f"metrics: request bytes {got_req:.0f} (bodies {bodies} + headers), response bytes "
          f"{got_resp:.0f} (curl got {sent_resp}), connections opened {opened:.0f}")
    # curl reports request header sizes inconsistently with Expect: 100-continue, so
    # the request side is checked as bodies plus at most 1 KiB of headers each.
    assert bodies < got_req <= bodies + 3 * 1024
    assert got_resp == sent_resp
    assert opened == 3
    # The destination side names the same caller the same way (mesh.telemetry.labels):
    # the workload at the tunnel's source, proven by its certificate; the server by its
    # deployment (its app label), not its pod name.
    inbound = {"reporter": "destination", "source_workload": "meter",
               "source_workload_namespace": "demo",
               "source_principal": "spiffe://cluster.local/ns/demo/sa/meter",
               "destination_workload": "server", "connection_security_policy": "mutual_tls"}
    # A connection that arrives before the destination's snapshot lists meter is
    # labelled `unknown` (never another workload); once it does, it is named.
    wait_for("the destination side names the caller", lambda: sum(
        metric_sum(mesh.metrics(n), "istio_tcp_connections_closed_total", **inbound)
        for n in ("node-1", "node-2")) >= 1)
    by_meter = {k: v for k, v in inbound.items() if k != "source_workload"}
    named = {m.group(1) for n in ("node-1", "node-2") for line in mesh.metrics(n).splitlines()
             if line.startswith("istio_tcp_connections_closed_total")
             and all(f'{k}="{v}"' in line for k, v in by_meter.items())
             for m in [re.search(r'source_workload="([^"]*)"', line)] if m}
    assert named <= {"meter", "unknown"}, named
    wait_for("the destination side counts all of meter's connections", lambda: sum(
        metric_sum(mesh.metrics(n), "istio_tcp_connections_closed_total", **by_meter)
        for n in ("node-1", "node-2")) >= 4)


def test_namespace_enrollment_follows_the_label_live(mesh: LocalMesh) -> None:
    ns = """
apiVersion: v1
kind: Namespace
metadata:
  name: late
  labels: {LABELS}
"""
    apply_ok(mesh, ns.replace("{LABELS}", "{}") + "---\n" +
             pod("late-client", "late", "node-2", ["sleep", "infinity"]))
    late = mesh.pod("late", "late-client", enrolled=False)
    pids = wait_for("the app running", lambda: (
        late.cgroup_path / "cgroup.procs").read_text().split())
    start = time.monotonic()
    apply_ok(mesh, ns.replace("{LABELS}", "{ambientmesh.io/dataplane-mode: ambient}"))
    mesh.pod("late", "late-client", enrolled=True)
    took = time.monotonic() - start
    print(f"namespace labelled -> pod captured in {took * 1000:.0f} ms")
    # The issue asks for < 1 s (measured: ~130 ms); a loaded CI machine gets slack here
    # because timing is measured in bench/, not asserted tightly by tests.
    assert took < 5.0
    out = mesh.exec(late, ["curl", "-sS", "-m", "5", "http://server.demo/"])
    assert out.returncode == 0 and out.stdout.startswith("hello from")
    assert 'source_workload="late-client"' in mesh.metrics("node-2")
    apply_ok(mesh, ns.replace("{LABELS}", "{}"))
    mesh.pod("late", "late-client", enrolled=False)
    assert (late.cgroup_path / "cgroup.procs").read_text().split() == pids, "app restarted"
    server_2 = mesh.runtime.get_pod("demo", "server-2")
    out = mesh.exec(late, ["curl", "-sS", "-m", "5", f"http://{server_2.ip}:8080/"])
    assert out.returncode == 0, out.stderr


def test_wrk_through_the_mesh(mesh: LocalMesh) -> None:
    client = mesh.pod("demo", "client", enrolled=True)
    out = mesh.exec(client, ["wrk", "-t1", "-c8", "-d2s", "http://server.demo/"], timeout=30)
    assert out.returncode == 0, out.stderr
    print(out.stdout)
    assert "Non-2xx" not in out.stdout and "Socket errors" not in out.stdout
    requests = int(out.stdout.split(" requests in ")[0].split()[-1])
    assert requests > 50

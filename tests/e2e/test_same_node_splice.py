"""Same-node connections through the real mesh skip the tunnel and are spliced in the
kernel: a real controller, a real node agent (no worker processes: every byte the
proxy could read is this agent's), real pods, real client and server programs."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ebpf.splice import SpliceMaps
from tests.e2e.mesh_harness import LocalMesh, local_mesh, metric_sum, wait_for
from tests.topologies import (
    PY,
    SERVE,
    SLEEP,
    documents,
    namespace,
    pod,
    service,
    strict,
    waypoint,
)

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

BULK = str(Path(__file__).parent / "apps" / "bulk.py")
MB = 1 << 20
TOPOLOGY = documents(
    namespace("demo"),
    pod("sink", "demo", "node-1", [PY, BULK, "serve", "9000"], "sink", "app: sink"),
    pod("echo", "demo", "node-1", [PY, BULK, "echo", "9001"], "echo", "app: echo"),
    pod("client", "demo", "node-1", SLEEP, "client"),
)
DENY_CLIENT = """\
apiVersion: ambientmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-client, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/demo/sa/client"]}
"""
ALLOW_NOTHING = """\
apiVersion: ambientmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: demo}
spec:
  selector: {matchLabels: {app: sink}}
  action: ALLOW
"""


@pytest.fixture(scope="module")
def mesh() -> Iterator[LocalMesh]:
    with local_mesh("asn" + secrets.token_hex(2), nodes=1,
                    agent_args=("--workers", "0")) as m:
        m.apply(TOPOLOGY)
        m.wait_pods(enrolled=("demo/sink", "demo/echo", "demo/client"))
        yield m


def splice_maps(mesh: LocalMesh) -> SpliceMaps:
    return SpliceMaps.open(f"{mesh.cluster}-node-1")


def send(mesh: LocalMesh, up: int, down: int) -> dict[str, Any]:
    sink = mesh.pod("demo", "sink")
    out = mesh.exec(mesh.pod("demo", "client"),
                    [PY, BULK, "send", str(sink.ip), "9000", str(up), str(down)], timeout=120)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def records(mesh: LocalMesh, port: int) -> list[dict[str, Any]]:
    return [r for r in mesh.access_records("node-1")
            if str(r.get("destination_address", "")).endswith(f":{port}")]


def test_bulk_both_ways_is_spliced_and_the_proxy_reads_no_byte(mesh: LocalMesh) -> None:
    """60 MB up and 60 MB down with checksums, each side half-closing in turn. The
    kernel moved every byte: the BPF counters (the access log's bytes) account for all
    of them and the proxy forwarded none itself (it would, through user space, on the
    tunnel path or the fallback relay, and the splice path counter would not move)."""
    wait_for("sink answering", lambda: send(mesh, 10, 10)["down_ok"], timeout=30)
    before = mesh.metrics("node-1")
    up, down = 60 * MB, 60 * MB + 3
    result = send(mesh, up, down)
    assert result == {"up_ok": True, "down_bytes": down, "down_ok": True}
    header = len(f"{down}\n")

    def both_records() -> list[dict[str, Any]] | None:
        mine = [r for r in records(mesh, 9000) if r["request_bytes"] == up + header]
        return mine if len(mine) == 2 else None

    outbound, inbound = sorted(wait_for("both access-log records", both_records),
                               key=lambda r: r["direction"] != "outbound")
    for r in (outbound, inbound):
        assert (r["request_bytes"], r["response_bytes"], r["outcome"], r["transport"]) == (
            up + header, 64 + down, "ok", "hbone")
        assert r["source_identity"] == "spiffe://cluster.local/ns/demo/sa/client"
        assert r["destination_identity"] == "spiffe://cluster.local/ns/demo/sa/sink"
    assert (outbound["direction"], inbound["direction"]) == ("outbound", "inbound")
    after = mesh.metrics("node-1")

    def moved(name: str, **labels: str) -> float:
        return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

    assert moved("ambient_same_node_connections_total", path="splice") == 1
    assert moved("ambient_same_node_connections_total", path="relay") == 0
    assert moved("ambient_splice_user_space_bytes_total") == 0
    for reporter in ("source", "destination"):
        assert moved("istio_tcp_received_bytes_total", reporter=reporter,
                     connection_security_policy="mutual_tls",
                     destination_workload="sink") == up + header
        assert moved("istio_tcp_sent_bytes_total", reporter=reporter,
                     connection_security_policy="mutual_tls",
                     destination_workload="sink") == 64 + down
    maps = splice_maps(mesh)
    try:  # torn down: nothing left in the sockhash nor the side maps
        assert set(maps.count().values()) == {0}
    finally:
        maps.close()


def test_deny_policy_cuts_a_live_spliced_connection_and_refuses_new_ones(
        mesh: LocalMesh) -> None:
    echo = mesh.pod("demo", "echo")
    client = mesh.pod("demo", "client")
    holder = mesh.runtime.spawn(client, [PY, BULK, "hold", str(echo.ip), "9001"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert json.loads(holder.stdout.readline()) == {"state": "open"}
        maps = splice_maps(mesh)
        try:
            assert maps.count()["am_splice_socks"] == 2  # the live connection, spliced
            mesh.apply(DENY_CLIENT, file="deny.yaml")
            ended = json.loads(holder.stdout.readline())
            assert ended == {"state": "reset"}
            wait_for("the cut connection's entries gone",
                     lambda: set(maps.count().values()) == {0})
        finally:
            maps.close()
        holder.wait(10)
        cut = wait_for("the cut connection's access-log records", lambda: [
            r for r in records(mesh, 9001) if r["outcome"] == "denied"
            and r["request_bytes"] == 4] or None)
        assert {r["direction"] for r in cut} == {"outbound", "inbound"}
        assert all(r["policy"] == "demo/no-client" for r in cut), cut
        # and a new connection is refused
        again = mesh.exec(client, [PY, BULK, "hold", str(echo.ip), "9001"], timeout=20)
        assert again.returncode != 0
        assert "ConnectionResetError" in again.stderr or "reset" in again.stderr.lower()
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
        mesh.delete(DENY_CLIENT, file="deny.yaml")


def test_allow_nothing_refuses_and_strict_still_admits_the_same_node_path(
        mesh: LocalMesh) -> None:
    """STRICT: the same-node path is mutual TLS (both certificates this node's), so it
    stays allowed; an ALLOW policy with no rule denies everything, on this path too."""
    mesh.apply(strict("demo"), file="strict.yaml")
    try:
        wait_for("sink answering under STRICT", lambda: send(mesh, 1000, 1000)["down_ok"],
                 timeout=30)
        mesh.apply(ALLOW_NOTHING, file="allow-nothing.yaml")
        sink = mesh.pod("demo", "sink")

        def refused() -> bool:
            out = mesh.exec(mesh.pod("demo", "client"),
                            [PY, BULK, "send", str(sink.ip), "9000", "10", "10"], timeout=20)
            return out.returncode != 0
        wait_for("allow-nothing refuses", refused, timeout=30)
        denied = [r for r in records(mesh, 9000) if r["outcome"] == "denied"]
        assert {r["direction"] for r in denied} >= {"outbound", "inbound"}
        assert any(r["policy"] == "demo/allow-nothing" for r in denied), denied
    finally:
        mesh.delete(ALLOW_NOTHING, file="allow-nothing.yaml")
        mesh.delete(strict("demo"), file="strict.yaml")


def test_a_waypoint_bound_destination_never_takes_the_fast_path(mesh: LocalMesh) -> None:
    """A service bound to a waypoint: every connection goes through the waypoint (L7
    policy lives there), even with client, waypoint and app on this one node."""
    bound = documents(
        waypoint("demo"),
        pod("web", "demo", "node-1", SERVE, "web", "app: web"),
        service("web", "demo", "app: web", use_waypoint="waypoint"))
    mesh.apply(bound, file="waypoint.yaml")
    try:
        mesh.pod("demo", "waypoint")
        mesh.pod("demo", "web", enrolled=True)
        client = mesh.pod("demo", "client")

        def get() -> bool:
            out = mesh.exec(client, ["curl", "-sS", "-m", "5", "http://web.demo/"])
            return out.returncode == 0 and out.stdout.startswith("hello from")
        wait_for("web answering through its waypoint", get, timeout=60)
        before = mesh.metrics("node-1")
        for _ in range(3):
            assert get()
        after = mesh.metrics("node-1")
        assert metric_sum(after, "ambient_same_node_connections_total") == metric_sum(
            before, "ambient_same_node_connections_total")
        to_web = [r for r in mesh.access_records("node-1")
                  if r["direction"] == "outbound" and r["destination_service"] == "demo/web"]
        assert to_web and all("waypoint" in r["destination_workload"] for r in to_web), to_web
    finally:
        mesh.delete(bound, file="waypoint.yaml")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

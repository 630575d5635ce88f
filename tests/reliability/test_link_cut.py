"""The link between two nodes is cut for 5 s under steady load: the node proxy turns it
into clear, bounded errors (CONNECT timeout, HTTP/2 keepalive), logs and counts them,
and traffic recovers as soon as the link is back.

Node agents run with short liveness settings (connect timeout 2 s, PING after 1 s of
silence, dead 1 s later) and the client's own timeout is 5 s, so a failure that took
less than ~3 s was the proxy's doing, not the client giving up."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.mesh_harness import LocalMesh, local_mesh, wait_for
from tests.reliability.harness import Load, wait_serving
from tests.reliability.test_faults import link_up, static_routes
from tests.topologies import SERVE, SLEEP, documents, namespace, pod

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

NS = "cut"
CONNECT_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT = 2.0, 1.0, 1.0
CLIENT_TIMEOUT = 5.0
AGENT_ARGS = ("--tunnel-connect-timeout", str(CONNECT_TIMEOUT),
              "--tunnel-keepalive-interval", str(KEEPALIVE_INTERVAL),
              "--tunnel-keepalive-timeout", str(KEEPALIVE_TIMEOUT))
# The slowest a failure may be: the connect timeout (or keepalive interval + timeout),
# plus scheduling slack on a loaded 2-core machine; well under the client's timeout.
FAIL_BOUND_MS = 1000 * (max(CONNECT_TIMEOUT, KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT) + 1.0)
CUT = 5.0
RECOVERY_BOUND = 3.0

TOPOLOGY = documents(
    namespace(NS),
    pod("server", NS, "node-2", SERVE, "server", "app: server"),
    pod("client", NS, "node-1", SLEEP, "client"),
)


@pytest.fixture(scope="module")
def mesh() -> Iterator[LocalMesh]:
    with local_mesh("amc" + secrets.token_hex(2), 2, AGENT_ARGS) as m:
        m.apply(TOPOLOGY)
        client = m.pod(NS, "client", enrolled=True)
        server = m.pod(NS, "server", enrolled=True)
        wait_serving(m, client, f"http://{server.ip}:8080/")
        yield m


def access_records(mesh: LocalMesh, node: str, destination: str) -> list[dict[str, Any]]:
    out = []
    for line in mesh.logs(node).splitlines():
        if '"log":"access"' in line and destination in line:
            record = json.loads(line[line.index("{"):])
            if record["destination_address"] == destination:
                out.append(record)
    return out


def tunnel_failures(mesh: LocalMesh, node: str) -> dict[tuple[str, str], float]:
    found = {}
    for line in mesh.metrics(node).splitlines():
        if line.startswith("ambient_tunnel_failures_total{"):
            labels, value = line.rsplit(" ", 1)
            pairs = dict(p.split("=", 1) for p in labels[labels.index("{") + 1:-1].split(","))
            found[(pairs["reason"].strip('"'), pairs["phase"].strip('"'))] = float(value)
    return found


class FabricDrop:
    """Every packet to or from one node's uplink silently dropped in the fabric (nftables
    forward chain): a link that vanished, no ICMP, no RST, as when a cable or a switch
    port dies. Restored by deleting the table."""

    def __init__(self, fabric_netns: str, uplink: str) -> None:
        self.netns, self.uplink = fabric_netns, uplink
        self.table = f"linkcut_{uplink}"

    def cut(self) -> None:
        rules = (f"table inet {self.table} {{\n chain cut {{\n"
                 " type filter hook forward priority 0; policy accept;\n"
                 f' iifname "{self.uplink}" drop\n oifname "{self.uplink}" drop\n }}\n}}\n')
        subprocess.run(["ip", "netns", "exec", self.netns, "nft", "-f", "-"],
                       input=rules.encode(), check=True)

    def restore(self) -> None:
        subprocess.run(["ip", "netns", "exec", self.netns, "nft", "delete", "table", "inet",
                        self.table], capture_output=True, check=False)


def run_cut(mesh: LocalMesh, name: str, cut: Any, restore: Any) -> dict[str, Any]:
    """Steady load client (node-1) -> server (node-2); cut at t=4 s for CUT seconds."""
    client = mesh.runtime.get_pod(NS, "client")
    server = mesh.runtime.get_pod(NS, "server")
    destination = f"{server.ip}:8080"
    peer = f"{server.ip}:15008"
    failures_before = sum(tunnel_failures(mesh, "node-1").values())
    logged_before = len(access_records(mesh, "node-1", destination))
    duration = 4 + CUT + 9
    load = Load(mesh, client, name, f"http://{destination}/", duration=duration, rate=20,
                workers=16, timeout=CLIENT_TIMEOUT)  # many workers: most are blocked in a cut
    try:
        time.sleep(4)
        cut()
        down_at, down_wall = load.elapsed(), time.time()
        try:
            time.sleep(CUT)
        finally:
            restore()
        up_at, up_wall = load.elapsed(), time.time()
        report = load.report()
    finally:
        restore()
        load.stop()
    # Worker processes report their metrics every 2 s: wait until every failure logged
    # is counted (or fail with what was seen).
    time.sleep(2.5)
    records = access_records(mesh, "node-1", destination)[logged_before:]
    bad = [r for r in records if r["outcome"] != "ok"]

    def all_counted() -> dict[tuple[str, str], float] | None:
        found = tunnel_failures(mesh, "node-1")
        return found if sum(found.values()) - failures_before >= len(bad) else None

    counted = wait_for("tunnel failures counted", all_counted, timeout=10)
    ok_after = [r["t"] for r in report.results if r["ok"] and r["t"] >= up_at]
    first_ok = min(ok_after, default=float("inf"))
    return {"report": report, "down_at": down_at, "up_at": up_at, "down_wall": down_wall,
            "up_wall": up_wall, "records": records, "bad": bad, "peer": peer,
            "metrics": counted, "new_failures": sum(counted.values()) - failures_before,
            "recovery": first_ok - up_at}


def check(result: dict[str, Any], name: str) -> None:
    report, bad, peer = result["report"], result["bad"], result["peer"]
    down_at, up_at = result["down_at"], result["up_at"]
    before = [r for r in report.results if r["t"] < down_at - 0.5]
    during = [r for r in report.results if down_at <= r["t"] < up_at]
    reasons = Counter(r["reason"].split(" (after")[0].split(": no answer")[0] for r in bad)
    slowest = max((f["ms"] for f in report.failed), default=0.0)
    print(f"{name}: link cut from t={down_at:.1f}s to t={up_at:.1f}s ({CUT:.0f} s); "
          f"agents: connect timeout {CONNECT_TIMEOUT:g} s, keepalive "
          f"{KEEPALIVE_INTERVAL:g}+{KEEPALIVE_TIMEOUT:g} s; client timeout {CLIENT_TIMEOUT:g} s")
    print(report.summary())
    print(f"  before the cut: {sum(r['ok'] for r in before)} of {len(before)} ok; during: "
          f"{len(during)} started, {sum(not r['ok'] for r in during)} failed, slowest "
          f"failure {slowest:.0f} ms (bound {FAIL_BOUND_MS:.0f} ms, client timeout "
          f"{CLIENT_TIMEOUT * 1000:.0f} ms); first success {result['recovery']:.2f} s after "
          f"the link came back")
    print(f"  node-1 access log: {len(result['records'])} connections, {len(bad)} not ok: "
          f"{dict(reasons)}")
    print(f"  ambient_tunnel_failures_total on node-1: "
          f"{ {'/'.join(k): v for k, v in result['metrics'].items()} } "
          f"(+{result['new_failures']:.0f} in this run)")

    assert before and all(r["ok"] for r in before), "the mesh was not healthy before the cut"
    assert report.failed, "cutting the link changed nothing: the test is broken"
    for f in report.failed:
        assert down_at - 0.5 <= f["t"] <= up_at + 0.5, f"failure outside the cut: {f}"
        assert f["ms"] < FAIL_BOUND_MS, f"not a bounded, fast error: {f}"
    # The proxy, not the client, ended them: one non-ok record per failed request,
    # each naming the peer and the reason; an ok record only for a request that was ok.
    ok_records = len(result["records"]) - len(bad)
    assert (ok_records, len(bad)) == (report.total - len(report.failed), len(report.failed))
    for r in bad:
        assert r["outcome"] == "error", r
        assert peer in r["reason"], r
        assert any(why in r["reason"] for why in
                   ("timed out during", "failed keepalive", "cannot connect")), r
    # A connection may outlive a short stall (the link came back before any timeout),
    # but none can have been ok while it lasted.
    stalled_ok = [r for r in result["records"] if r["outcome"] == "ok"
                  and result["down_wall"] + 0.5 <= r["started"]
                  and r["started"] + r["duration_ms"] / 1000 <= result["up_wall"] - 0.5]
    assert not stalled_ok, f"connections inside the cut logged as ok: {stalled_ok[:3]}"
    assert result["new_failures"] >= len(bad), "failures not counted in the metric"
    # Recovery: a success within RECOVERY_BOUND s, and every request after that is ok.
    assert result["recovery"] <= RECOVERY_BOUND, f"recovered after {result['recovery']:.1f}s"
    tail = [r for r in report.results if r["t"] > up_at + RECOVERY_BOUND]
    assert len(tail) >= 60 and all(r["ok"] for r in tail), \
        [r for r in tail if not r["ok"]][:3]


def test_link_silently_dropped_for_5s_fails_fast_and_recovers(mesh: LocalMesh) -> None:
    """Every packet through node-2's uplink dropped (nftables in the fabric): the
    pooled tunnel fails its keepalive, new tunnels time out in TCP connect."""
    uplink = f"n{mesh.runtime.get_node('node-2').index}"
    drop = FabricDrop(mesh.runtime.fabric_netns, uplink)
    result = run_cut(mesh, "link-dropped", drop.cut, drop.restore)
    check(result, "silent drop")
    kinds = {reason for reason, _ in result["metrics"]}
    assert "keepalive_timeout" in kinds or "connect_timeout" in kinds, result["metrics"]


def test_link_down_for_5s_fails_fast_and_recovers(mesh: LocalMesh) -> None:
    """node-2's uplink administratively down in the fabric (its routes go with it, and
    are put back when it comes up: see test_faults.link_up)."""
    fabric = mesh.runtime.fabric_netns
    uplink = f"n{mesh.runtime.get_node('node-2').index}"
    routes = static_routes(fabric, uplink)
    assert routes, f"no static route through {uplink}: the fabric changed"
    subprocess.run(["ip", "netns", "exec", fabric, "sysctl", "-qw",
                    f"net.ipv6.conf.{uplink}.keep_addr_on_down=1"], check=True)
    result = run_cut(
        mesh, "link-down",
        lambda: subprocess.run(["ip", "-n", fabric, "link", "set", uplink, "down"],
                               check=True),
        lambda: link_up(fabric, uplink, routes))
    check(result, "link down")

"""The status verdict: every way a mesh can be unhealthy is named, with a fix."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ambientctl.health import AgentFacts, MeshFacts, evaluate

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def controller_status(**over: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "controller": {"healthy": True, "uptimeSeconds": 10, "trustDomain": "cluster.local",
                       "objects": 3, "configErrors": []},
        "proxies": [
            {"type": "node", "name": n, "connected": True, "latestVersion": "v1",
             "sentVersion": "v1", "ackedVersion": "v1", "inSync": True, "lastNack": None}
            for n in ("node-1", "node-2")],
        "namespaces": [{"name": "demo", "enrolled": True}, {"name": "legacy", "enrolled": False}],
        "waypoints": [{"name": "demo/waypoint", "addresses": ["10.100.1.4"],
                       "services": ["demo/catalog"], "ready": True}],
        "enrolledPods": ["demo/a", "demo/b"],
        "pods": {"total": 3, "running": 3, "pending": 0},
        "certificates": {"enabled": True, "roots": [
            {"subject": "CN=root", "notAfter": "2036-01-01T00:00:00+00:00", "signing": True,
             "fingerprintSha256": "ab"}]},
    }
    status.update(over)
    return status


def agent(node: str, **over: Any) -> AgentFacts:
    status: dict[str, Any] = {
        "node": node, "connected": True, "config_version": "v1",
        "bpf": {"healthy": True, "programs": [{"name": "connect4", "id": 7}]},
        "enrolled_pods": ["demo/a"],
        "certificates": [{"identity": "spiffe://cluster.local/ns/demo/sa/a", "serial": "1",
                          "not_after": "2026-01-02T00:00:00+00:00"}],
    }
    status.update(over)
    return AgentFacts(node, True, status)


def facts(status: dict[str, Any] | None = None, agents: list[AgentFacts] | None = None,
          alive: bool | None = True, error: str = "") -> MeshFacts:
    return MeshFacts("amesh", alive, status if status is not None or error else
                     controller_status(), error,
                     agents if agents is not None else [agent("node-1"), agent("node-2")], NOW)


def test_healthy_mesh() -> None:
    report = evaluate(facts())
    assert report.healthy, report.problems
    data = report.as_dict()
    assert data["healthy"] is True and data["problems"] == []
    assert [n["name"] for n in data["nodes"]] == ["node-1", "node-2"]
    assert data["ca"]["subject"] == "CN=root"
    assert {"name": "demo", "enrolled": True, "enrolledPods": 2} in data["namespaces"]
    assert data["certificates"][0]["expiresIn"] == "24h00m"


def test_killed_agent_is_named() -> None:
    report = evaluate(facts(agents=[agent("node-1"), AgentFacts("node-2", False, None,
                                                                "connection refused")]))
    assert not report.healthy
    assert [c.name for c in report.problems] == ["node-2"]
    assert "not running" in report.problems[0].detail
    assert "ambientctl logs node-2" in report.problems[0].hint


def test_unreachable_agent_endpoint() -> None:
    report = evaluate(facts(agents=[agent("node-1"), AgentFacts("node-2", True, None,
                                                                "Connection refused")]))
    assert report.problems[0].detail == "agent endpoint unreachable: Connection refused"


def test_nack_reason_is_reported() -> None:
    status = controller_status()
    status["proxies"][0].update(lastNack="workload x has an invalid address", inSync=False,
                                sentVersion="v2", latestVersion="v2")
    report = evaluate(facts(status))
    assert [c.name for c in report.problems] == ["node-1"]
    assert "rejected config v2: workload x has an invalid address" in report.problems[0].detail


def test_unacked_config_and_detached_bpf() -> None:
    status = controller_status()
    status["proxies"][1].update(latestVersion="v9", ackedVersion="v1", inSync=False)
    report = evaluate(facts(status, [agent("node-1", bpf={"healthy": False, "programs": []}),
                                     agent("node-2")]))
    problems = {c.name: c.detail for c in report.problems}
    assert problems == {"node-1": "BPF programs not attached",
                        "node-2": "config v9 not ACKed (has v1)"}


def test_controller_down() -> None:
    report = evaluate(facts(None, [], alive=False, error="connection refused"))
    assert not report.healthy
    assert {c.name for c in report.problems} == {"controller process", "controller admin API"}
    assert "ambientctl up" in report.problems[1].hint


def test_pods_waypoints_and_certificates() -> None:
    status = controller_status(pods={"total": 3, "running": 2},
                               waypoints=[{"name": "demo/waypoint", "addresses": [],
                                           "services": ["demo/catalog"], "ready": False}])
    near = agent("node-1", certificates=[{"identity": "spiffe://x/ns/demo/sa/a", "serial": "2",
                                          "not_after": "2026-01-01T00:30:00+00:00"}])
    report = evaluate(facts(status, [near, agent("node-2")]))
    names = [c.name for c in report.problems]
    assert names == ["pods", "waypoint demo/waypoint", "workload certificates"]
    assert "near expiry: spiffe://x/ns/demo/sa/a on node-1 (30m00s)" in report.problems[2].detail


def test_root_near_expiry_and_config_errors() -> None:
    status = controller_status()
    status["certificates"]["roots"][0]["notAfter"] = "2026-01-10T00:00:00+00:00"
    status["controller"]["configErrors"] = [{"message": "a.yaml doc 1: kind: unknown kind"}]
    report = evaluate(facts(status))
    assert [c.name for c in report.problems] == ["configuration", "CA root"]

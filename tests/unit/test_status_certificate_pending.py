"""`ambientctl status` is not healthy while a captured pod waits for its certificate
(its connections are refused), and says which pod and why (issue 20 finding 5)."""

from __future__ import annotations

from ambientctl.health import evaluate
from tests.unit.test_ambientctl_health import agent, facts


def test_pod_waiting_for_certificate_makes_status_unhealthy() -> None:
    waiting = [{"pod": "demo/new-0", "reason": "CaUnavailableError: CA unreachable"}]
    report = evaluate(facts(agents=[agent("node-1", pods_waiting_for_certificate=waiting),
                                    agent("node-2")]))
    assert not report.healthy
    (problem,) = report.problems
    assert problem.name == "node-1"
    assert "1 pod(s) waiting for a certificate" in problem.detail
    assert "demo/new-0 (CaUnavailableError: CA unreachable)" in problem.detail
    assert "CA" in problem.hint
    node = next(n for n in report.as_dict()["nodes"] if n["name"] == "node-1")
    assert node["healthy"] is False and node["podsWaitingForCertificate"] == waiting

"""The pure half of controller/kube/gateway_status.py: which parents are ours, what a
refused or dangling route says, Programmed only with a ready waypoint, and no churn
(lastTransitionTime kept while a condition's status holds)."""

from __future__ import annotations

from typing import Any

from controller.kube.gateway_status import (
    CONTROLLER_NAME,
    gateway_status,
    route_parents,
    same,
    with_times,
)

GW = {"metadata": {"name": "wp", "namespace": "demo", "generation": 2}}


def route(*parents: dict[str, Any], backend: str = "web") -> dict[str, Any]:
    return {"metadata": {"name": "r", "namespace": "demo", "generation": 4},
            "spec": {"parentRefs": list(parents),
                     "rules": [{"backendRefs": [{"name": backend, "port": 80}]}]}}


def by_type(conditions: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


def test_programmed_only_with_a_ready_waypoint() -> None:
    not_ready: list[dict[str, Any] | None] = [None, {"status": {}},
                                              {"status": {"readyReplicas": 0}}]
    for deployment in not_ready:
        conditions, _ = gateway_status(GW, deployment, None)
        assert by_type(conditions)["Programmed"] == ("False", "Pending")
    conditions, addresses = gateway_status(GW, {"status": {"readyReplicas": 1}},
                                           {"spec": {"clusterIP": "10.96.0.9"}})
    assert by_type(conditions) == {"Accepted": ("True", "Accepted"),
                                   "Programmed": ("True", "Programmed")}
    assert all(c["observedGeneration"] == 2 for c in conditions)
    assert addresses == [{"type": "IPAddress", "value": "10.96.0.9"}]
    _, addresses = gateway_status(GW, None, {"spec": {"clusterIP": "None"}})
    assert addresses == []


def test_only_service_parents_and_our_gateways_are_ours() -> None:
    parents = route({"group": "", "kind": "Service", "name": "web"},
                    {"name": "wp"},  # a Gateway (default kind) of our class
                    {"name": "other-gw"},  # another controller's Gateway
                    {"group": "example.com", "kind": "Service", "name": "x"})
    ours = route_parents(parents, None, {("demo", "web")}, {("demo", "wp")})
    assert [p["parentRef"] for p in ours] == [{"group": "", "kind": "Service", "name": "web"},
                                              {"name": "wp"}]
    assert all(p["controllerName"] == CONTROLLER_NAME for p in ours)
    assert all(by_type(p["conditions"]) == {"Accepted": ("True", "Accepted"),
                                            "ResolvedRefs": ("True", "ResolvedRefs")}
               for p in ours)
    assert all(c["observedGeneration"] == 4 for p in ours for c in p["conditions"])


def test_refused_missing_parent_and_dangling_backend_say_why() -> None:
    svc = {"group": "", "kind": "Service", "name": "web"}
    (refused,) = route_parents(route(svc), "rules[0]: bad header", {("demo", "web")}, set())
    accepted = refused["conditions"][0]
    assert (accepted["status"], accepted["reason"]) == ("False", "UnsupportedValue")
    assert "bad header" in accepted["message"]
    (orphan,) = route_parents(route(svc), None, set(), set())
    assert by_type(orphan["conditions"])["Accepted"] == ("False", "NoMatchingParent")
    (dangling,) = route_parents(route(svc, backend="gone"), None, {("demo", "web")}, set())
    assert by_type(dangling["conditions"])["ResolvedRefs"] == ("False", "BackendNotFound")


def test_transition_time_moves_only_when_the_status_does() -> None:
    old = [{"type": "Programmed", "status": "False", "reason": "Pending", "message": "m",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    same_status = [{"type": "Programmed", "status": "False", "reason": "Pending",
                    "message": "other"}]
    assert with_times(same_status, old)[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    flipped = [{"type": "Programmed", "status": "True", "reason": "Programmed",
                "message": "m"}]
    assert with_times(flipped, old)[0]["lastTransitionTime"] != "2026-01-01T00:00:00Z"
    assert same([{k: v for k, v in old[0].items() if k != "lastTransitionTime"}], old)
    assert not same(flipped, old)

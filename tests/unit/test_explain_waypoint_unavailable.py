"""`ambientctl explain` tells what the node proxy does when a waypoint is unavailable:
it refuses (issue 20 finding 3), it never sends around the waypoint."""

from __future__ import annotations

from ambientctl.explain import Explainer, ExplainRequest
from ambientctl.refs import parse_destination
from mesh.api import config_pb2 as pb
from tests.unit.test_ambientctl_explain import snapshots


def explain_with_waypoint(addresses: list[str], identity: str, method: str = "DELETE"
                          ) -> dict[str, object]:
    snaps = snapshots()
    for snap in snaps.values():
        for svc in snap.services:
            if svc.name == "catalog":
                svc.waypoint.CopyFrom(pb.WaypointRef(
                    namespace="demo", name="waypoint", addresses=addresses, port=15008,
                    identity=identity))
    e = Explainer(snaps.__getitem__).explain(
        ExplainRequest(("demo", "frontend-0"), parse_destination("catalog.demo:80/items"),
                       method), "node-1")
    return e.as_dict()


def test_waypoint_without_address_is_refused_not_bypassed() -> None:
    out = explain_with_waypoint([], "spiffe://cluster.local/ns/demo/sa/waypoint")
    verdict = out["verdict"]
    assert isinstance(verdict, dict)
    assert verdict["allowed"] is False and verdict["decidedBy"] == "waypoint demo/waypoint"
    steps = out["steps"]
    assert isinstance(steps, list)
    step = next(s for s in steps if s["stage"] == "waypoint")
    assert "no ready address" in step["detail"] and "refused" in step["detail"]
    assert out["backends"] == []  # nothing reaches catalog's pods


def test_waypoint_whose_gateway_is_missing_is_refused() -> None:
    out = explain_with_waypoint([], "", method="GET")
    verdict = out["verdict"]
    assert isinstance(verdict, dict) and verdict["allowed"] is False
    assert "no waypoint Gateway of that name exists" in str(out["steps"])

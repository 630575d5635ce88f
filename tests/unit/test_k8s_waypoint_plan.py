"""waypoints.plan (sans-I/O): what to apply and delete so the API server holds exactly
what the waypoint Gateways need, given what the owned-object watches see."""

from __future__ import annotations

import copy
from typing import Any

from controller.kube.waypoints import OWNED_KINDS, covers, digest, plan, render

IMAGE, ADDR = "ambient-mesh:test", "ambient-controller.ambient-system.svc:15012"


def gateway(name: str = "waypoint", ns: str = "demo", cls: str = "ambient-waypoint"
            ) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}"},
            "spec": {"gatewayClassName": cls}}


def as_served(obj: dict[str, Any]) -> dict[str, Any]:
    """What an API server returns for an applied object: metadata, defaults, status."""
    out = copy.deepcopy(obj)
    out["metadata"].update(uid=f"uid-{obj['kind']}", resourceVersion="42",
                           creationTimestamp="2026-01-01T00:00:00Z")
    out["metadata"]["labels"]["team"] = "added-by-someone"
    if obj["kind"] == "Deployment":
        spec = out["spec"]
        spec["strategy"] = {"type": "RollingUpdate"}
        c = spec["template"]["spec"]["containers"][0]
        c["terminationMessagePath"] = "/dev/termination-log"
        c["readinessProbe"]["httpGet"]["scheme"] = "HTTP"
        out["status"] = {"replicas": 1, "readyReplicas": 1}
    if obj["kind"] == "Service":
        out["spec"]["clusterIP"] = "10.96.0.99"
        out["spec"]["type"] = "ClusterIP"
    return out


def observed_for(*gws: dict[str, Any]) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    out: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k: {} for k in OWNED_KINDS}
    for gw in gws:
        for obj in render(gw, image=IMAGE, controller_addr=ADDR):
            meta = obj["metadata"]
            out[obj["kind"]][(meta["namespace"], meta["name"])] = as_served(obj)
    return out


def run(gws: list[dict[str, Any]], observed: Any, listed: bool = True,
        last: Any = None) -> Any:
    return plan(gws, observed, image=IMAGE, controller_addr=ADDR, gateways_listed=listed,
                last_applied=last)


def test_nothing_there_yet_applies_all_four_objects() -> None:
    p = run([gateway()], {k: {} for k in OWNED_KINDS})
    assert [o["kind"] for o in p.apply[("demo", "waypoint")]] == [
        "ServiceAccount", "Deployment", "Service", "NetworkPolicy"]
    assert p.delete == []


def test_served_objects_with_defaults_and_extra_labels_are_not_drift() -> None:
    assert not run([gateway()], observed_for(gateway()))


def test_a_deleted_deployment_is_applied_again_alone() -> None:
    observed = observed_for(gateway())
    del observed["Deployment"][("demo", "waypoint")]
    p = run([gateway()], observed)
    assert [o["kind"] for o in p.apply[("demo", "waypoint")]] == ["Deployment"]


def test_a_hand_edit_of_a_field_we_set_is_drift() -> None:
    observed = observed_for(gateway())
    dep = observed["Deployment"][("demo", "waypoint")]
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    svc = observed["Service"][("demo", "waypoint")]
    svc["spec"]["ports"].append({"name": "extra", "port": 80})
    p = run([gateway()], observed)
    assert sorted(o["kind"] for o in p.apply[("demo", "waypoint")]) == ["Deployment", "Service"]


def test_a_new_gateway_uid_rewrites_the_owner_reference() -> None:
    observed = observed_for(gateway())
    again = gateway()
    again["metadata"]["uid"] = "uid-recreated"
    p = run([again], observed)
    assert len(p.apply[("demo", "waypoint")]) == 4
    for obj in p.apply[("demo", "waypoint")]:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-recreated"


def test_objects_of_a_gone_or_reclassed_gateway_are_deleted_with_their_uid() -> None:
    observed = observed_for(gateway(), gateway("other"))
    p = run([gateway(), gateway("other", cls="istio")], observed)
    assert not p.apply
    assert p.delete == [((k, "demo", "other"), f"uid-{k}") for k in OWNED_KINDS]


def test_nothing_is_deleted_before_the_gateways_were_listed() -> None:
    assert not run([], observed_for(gateway()), listed=False)


def test_unwatched_kind_is_applied_once_per_rendering_and_never_deleted() -> None:
    observed: dict[str, Any] = dict(observed_for(gateway()))
    observed["NetworkPolicy"] = None  # e.g. no RBAC to list it
    p = run([gateway()], observed)
    assert [o["kind"] for o in p.apply[("demo", "waypoint")]] == ["NetworkPolicy"]
    policy = p.apply[("demo", "waypoint")][0]
    last = {("NetworkPolicy", "demo", "waypoint"): digest(policy)}
    assert not run([gateway()], observed, last=last)
    deletes = run([], observed, last=last).delete
    assert sorted(kind for (kind, _, _), _ in deletes) == ["Deployment", "Service",
                                                           "ServiceAccount"]


def test_covers_is_a_field_subset_with_lists_of_equal_length() -> None:
    assert covers({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": 2}})
    assert not covers({"a": 1}, {"a": 2})
    assert not covers({"a": [1, 2]}, {"a": [1]})
    assert covers({"a": [{"x": 1, "y": 2}]}, {"a": [{"x": 1}]})
    assert not covers(None, {"a": 1})

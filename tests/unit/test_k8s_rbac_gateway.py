"""Issue 15 items 2 and 4: the controller's ClusterRole grants what the waypoint and
Gateway status code call, including `update` on gateways/finalizers, which the
OwnerReferencesPermissionEnforcement admission plugin (OpenShift) requires to set
blockOwnerDeletion on owner references to a Gateway."""

from __future__ import annotations

from typing import Any

import pytest

from ambientctl.commands.install import render_base
from controller.kube.waypoints import render
from tests.unit.test_k8s_manifests import BASE

GW = "gateway.networking.k8s.io"


def controller_rules() -> list[dict[str, Any]]:
    return next(d["rules"] for d in render_base(BASE)
                if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "ambient-controller")


def allowed(group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               and not r.get("resourceNames") for r in controller_rules())


def test_owner_references_with_block_owner_deletion_are_permitted() -> None:
    objects = render({"metadata": {"name": "wp", "namespace": "demo", "uid": "u"}},
                     image="i", controller_addr="c:1")
    assert all(o["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] for o in objects)
    assert allowed(GW, "gateways/finalizers", "update")


@pytest.mark.parametrize(("group", "resource", "verb"), [
    (GW, "gatewayclasses", "get"), (GW, "gatewayclasses", "create"),
    (GW, "gatewayclasses/status", "patch"), (GW, "gateways/status", "patch"),
    (GW, "httproutes/status", "patch"),
    ("", "services", "update"), ("apps", "deployments", "update"),
    ("", "serviceaccounts", "update"), ("networking.k8s.io", "networkpolicies", "update"),
])
def test_status_writes_and_replacing_owned_objects_are_permitted(
        group: str, resource: str, verb: str) -> None:
    assert allowed(group, resource, verb)


def test_gateways_themselves_stay_read_only() -> None:
    for verb in ("create", "update", "patch", "delete"):
        assert not allowed(GW, "gateways", verb)
        assert not allowed(GW, "httproutes", verb)
    assert not allowed(GW, "gatewayclasses", "delete")

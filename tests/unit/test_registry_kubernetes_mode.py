"""The registry in Kubernetes mode (`schedule=False`) never makes, places or vouches
for a pod a kubelet does not run: no stand-in pods for Deployments or waypoint
Gateways, no placement without spec.nodeName, no placements left by an earlier
local-mode run in the same state directory. The same config in local mode does."""

from __future__ import annotations

from pathlib import Path

from controller.registry import Registry
from controller.state import StateDir
from tests.unit.test_registry import examples, objs

BOUND = """
apiVersion: v1
kind: Pod
metadata: {name: bound, namespace: demo}
spec: {nodeName: node-2, serviceAccountName: web, containers: [{name: c, command: [x]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: unbound, namespace: demo}
spec: {serviceAccountName: web, containers: [{name: c, command: [x]}]}
"""


def test_kubernetes_mode_places_only_pods_bound_to_a_node(tmp_path: Path) -> None:
    config = {**examples(), **objs(BOUND)}
    local = Registry(state=StateDir(tmp_path))
    local.replace_config(config)
    local.register_node("node-1", [])
    placed = {ref: p.node for ref, p in local.view().pods.items()}
    assert placed[("demo", "waypoint")] == "node-1"  # local mode: the controller schedules
    assert placed[("demo", "unbound")] == "node-1"
    assert local.pod_placement("demo", "waypoint") == ("node-1", "waypoint")

    # Same state dir (placements.json holds the local run's), Kubernetes mode.
    kube = Registry(state=StateDir(tmp_path), schedule=False)
    kube.replace_config(config)
    kube.register_node("node-1", [])
    view = kube.view()
    # Written pods only (the registry's input in this mode is the API server's pods,
    # all bound; these unbound ones stay unplaced, whatever nodes have registered).
    assert {ref: p.node for ref, p in view.pods.items()} == {
        ("demo", "sleep"): None, ("demo", "unbound"): None, ("demo", "bound"): "node-2"}
    assert ("demo", "waypoint") not in view.pods
    assert ("demo", "catalog-0") not in view.pods  # Deployments are the kubelet's business
    assert kube.pod_placement("demo", "waypoint") is None
    assert kube.pod_placement("demo", "unbound") is None
    assert kube.pod_placement("demo", "bound") == ("node-2", "web")
    # The Gateway is still a waypoint (its identity is a waypoint's), with no address.
    assert kube.is_waypoint("demo", "waypoint")
    assert view.waypoints[("demo", "waypoint")].addresses == []

"""A use-waypoint binding reaches the node proxy even when its Gateway does not exist
(deleted, or a typo), so the proxy refuses the traffic instead of bypassing the
waypoint's L7 policy (issue 20 finding 3; Istio refuses it too)."""

from __future__ import annotations

import pytest

from controller.registry import Registry
from controller.snapshots import FragmentCache, SnapshotBuilder
from mesh.config import parse_documents
from nodeagent.balance import EndpointPicker
from nodeagent.errors import WaypointUnavailable
from nodeagent.outbound_plan import plan
from nodeagent.state import ProxyState

BASE = """\
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {ambientmesh.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: a, labels: {ambientmesh.io/use-waypoint: wp}}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: a, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, command: [sleep, "1000"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: pinned, namespace: a, labels: {ambientmesh.io/use-waypoint: wpx}}
spec: {nodeName: n1, containers: [{name: c, command: [sleep, "1000"]}]}
"""
GATEWAY = """\
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: a}
spec: {gatewayClassName: ambient-waypoint}
"""


def registry(text: str) -> Registry:
    reg = Registry()
    reg.replace_config({d.key: d.resource for d in parse_documents(text, "t.yaml")})
    return reg


def test_binding_to_a_missing_gateway_is_kept_and_refused() -> None:
    view = registry(BASE).view()
    assert view.services[("a", "web")].waypoint == ("a", "wp")
    assert view.pods[("a", "pinned")].waypoint == ("a", "wpx")
    snap = SnapshotBuilder(view).node("n1").message()
    svc = next(s for s in snap.services if s.name == "web")
    assert svc.HasField("waypoint") and svc.waypoint.name == "wp"
    assert not svc.waypoint.addresses and not svc.waypoint.identity
    state = ProxyState.from_snapshot(snap)
    vip = svc.vips[0]
    with pytest.raises(WaypointUnavailable, match="no waypoint Gateway of that name exists"):
        plan(state, EndpointPicker(), vip, 80, now=0)


def test_gateway_created_later_updates_the_cached_binding() -> None:
    """The fragment cache must not keep the 'no Gateway' binding once it exists."""
    cache = FragmentCache()
    before = SnapshotBuilder(registry(BASE).view(), cache).node("n1").message()
    after = SnapshotBuilder(registry(BASE + GATEWAY).view(), cache).node("n1").message()
    old = next(s for s in before.services if s.name == "web").waypoint
    new = next(s for s in after.services if s.name == "web").waypoint
    assert not old.identity
    assert new.identity == "spiffe://cluster.local/ns/a/sa/wp"

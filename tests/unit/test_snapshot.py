"""Snapshot building: contents per scope, fragment concatenation, stable versions, and
push distribution only to proxies whose content changed."""

from __future__ import annotations

from pathlib import Path

from controller.metrics import ControllerMetrics
from controller.push import ProxyRecord, PushServer
from controller.registry import Registry
from controller.snapshots import SnapshotBuilder
from controller.view import PodState
from mesh.api import config_pb2 as pb
from mesh.config import ObjectKey, Resource, load_file, parse_documents

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def examples() -> dict[ObjectKey, Resource]:
    out = {}
    for f in sorted(EXAMPLES.glob("*.yaml")):
        for d in load_file(f):
            out[d.key] = d.resource
    return out


def cluster() -> Registry:
    reg = Registry()
    reg.register_node("n1", ["10.244.1.0/24"])
    reg.register_node("n2", ["10.244.2.0/24"])
    reg.replace_config(examples())
    for node, base in (("n1", "10.244.1."), ("n2", "10.244.2.")):
        states = [(ref, PodState(p.uid, node, f"{base}{i + 2}", f"fd00::{i + 2}", "Running"))
                  for i, (ref, p) in enumerate(sorted(reg.view().pods.items()))
                  if p.node == node]
        reg.report_pods(node, states)
    return reg


def test_node_snapshot_contents() -> None:
    reg = cluster()
    b = SnapshotBuilder(reg.view())
    snaps = {n: b.node(n).message("nonce-1") for n in ("n1", "n2")}
    s1 = snaps["n1"]
    assert s1.kind == pb.NODE and s1.nonce == "nonce-1" and s1.trust_domain == "cluster.local"
    # Pods are split between the nodes; workloads and services are mesh-wide.
    run = {n: sorted(p.name for p in s.pods_to_run) for n, s in snaps.items()}
    assert sorted(run["n1"] + run["n2"]) == ["catalog-0", "catalog-1", "sleep", "waypoint"]
    assert len(s1.workloads) == len(snaps["n2"].workloads) == 4
    assert {s.name for s in s1.services} == {"catalog", "legacy-db"}
    wl = {w.name: w for w in s1.workloads}
    assert len(wl["sleep"].addresses) == 2 and wl["sleep"].addresses[1].startswith("fd00::")
    assert wl["waypoint"].native_hbone and not wl["waypoint"].enrolled
    assert wl["catalog-0"].identity == "spiffe://cluster.local/ns/demo/sa/catalog"
    catalog = next(s for s in s1.services if s.name == "catalog")
    assert catalog.waypoint.name == "waypoint" and catalog.waypoint.port == 15008
    assert list(catalog.waypoint.addresses) == list(wl["waypoint"].addresses)
    assert [p.target_port_name for p in catalog.ports] == ["http"]
    # Policies only for local workloads, with their effective mTLS mode.
    for snap in snaps.values():
        local = {p.uid for p in snap.pods_to_run}
        assert {wp.workload_uid for wp in snap.workload_policies} == local
        for wp in snap.workload_policies:
            assert wp.mtls_mode == pb.STRICT and wp.mtls_policy == "demo/default"
    catalog_node = next(n for n, s in snaps.items()
                        if any(p.name == "catalog-0" for p in s.pods_to_run))
    snap = snaps[catalog_node]
    assert [a.name for a in snap.authorizations] == ["catalog-allow-sleep"]
    rule = snap.authorizations[0].rules[0]
    assert list(rule.sources[0].principals) == ["cluster.local/ns/demo/sa/sleep"]
    assert list(rule.operations[0].ports) == [8080]


def test_waypoint_snapshot_contents() -> None:
    b = SnapshotBuilder(cluster().view())
    snap = b.waypoint("demo", "waypoint").message()
    assert snap.kind == pb.WAYPOINT
    assert list(snap.waypoint.services) == ["demo/catalog", "demo/legacy-db"]
    (route,) = snap.routes
    assert route.parents[0].service == "catalog" and route.parents[0].port == 80
    canary = route.rules[1]
    assert [(x.name, x.weight) for x in canary.backends] == [("catalog", 90), ("catalog-v2", 10)]
    assert canary.timeout_ms == 2000
    assert canary.retry.attempts == 2 and list(canary.retry.codes) == [503]
    assert canary.retry.backoff_ms == 100
    assert canary.request_headers.set[0].name == "x-routed-by"
    assert route.rules[0].matches[0].path.type == pb.StringMatch.PREFIX
    assert route.rules[0].matches[0].headers[0].name == "x-admin"
    (tp,) = snap.traffic_policies
    assert tp.outlier_detection.consecutive_5xx == 5
    assert tp.outlier_detection.base_ejection_time_ms == 30_000
    assert tp.rate_limit.unit_seconds == 1 and tp.fault_injection.delay_ms == 200
    assert tp.HasField("retry_budget") and tp.retry_budget.percent == 20
    assert [a.name for a in snap.authorizations] == ["catalog-no-delete"]
    # Every workload: its backends, and its callers (source_workload by address).
    assert {w.name for w in snap.workloads} == {"catalog-0", "catalog-1", "sleep", "waypoint"}
    # Unknown waypoint: an empty (but valid) snapshot.
    assert not b.waypoint("demo", "nope").message().services


def test_fragments_equal_a_single_message_and_versions_are_stable() -> None:
    reg = cluster()
    content = SnapshotBuilder(reg.view()).node("n1")
    msg = content.message("n")
    rebuilt = pb.Snapshot()
    rebuilt.CopyFrom(msg)
    assert pb.Snapshot.FromString(rebuilt.SerializeToString()) == msg
    # Same inputs, new builder (e.g. a restarted controller): same version.
    again = cluster()
    assert SnapshotBuilder(again.view()).node("n1").version == content.version
    # A change anywhere in the mesh changes every node's version...
    objs = examples()
    objs.update({d.key: d.resource for d in parse_documents(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: demo}\n"
        "spec: {ports: [{port: 1}]}\n", "x.yaml")})
    reg.replace_config(objs)
    assert SnapshotBuilder(reg.view()).node("n1").version != content.version


def test_distribute_wakes_only_changed_scopes() -> None:
    reg = cluster()
    push = PushServer(reg, b"s" * 32, ControllerMetrics())
    recs: list[ProxyRecord] = []
    for kind, ns, name in ((pb.NODE, "", "n1"), (pb.WAYPOINT, "demo", "waypoint")):
        rec = ProxyRecord(kind=kind, name=name, namespace=ns, node="n1", connected=True)
        rec.sent_version = push.content_for(kind, ns, name).version
        push._live[len(recs)] = rec
        recs.append(rec)
    assert push.distribute(0.0) == 0
    # A policy only the node enforces: the waypoint's content is unchanged.
    objs = examples()
    objs.update({d.key: d.resource for d in parse_documents(
        "apiVersion: ambientmesh.io/v1alpha1\nkind: AuthorizationPolicy\n"
        "metadata: {name: deny-all, namespace: demo}\nspec: {action: DENY, rules: [{}]}\n",
        "p.yaml")})
    reg.replace_config(objs)
    assert push.distribute(0.0) == 1
    node_rec, wp_rec = recs
    assert node_rec.wake.is_set() and node_rec.pending is not None
    assert not wp_rec.wake.is_set() and wp_rec.pending is None
    # Distributing again without a change does not queue the same content twice.
    node_rec.wake.clear()
    assert push.distribute(0.0) == 0

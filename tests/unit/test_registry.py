"""Registry and its pure parts: scheduling, VIPs, enrollment, endpoints, waypoints,
policy resolution, persistence across restarts."""

from __future__ import annotations

from pathlib import Path

from controller.policy import effective_mtls, waypoint_authorizations, workload_authorizations
from controller.registry import Registry
from controller.scheduler import assign_nodes
from controller.state import StateDir
from controller.view import PodState
from controller.vips import allocate_vips
from mesh.config import (
    AuthorizationPolicy,
    ObjectKey,
    PeerAuthentication,
    Resource,
    load_file,
    parse_documents,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def examples() -> dict[ObjectKey, Resource]:
    out = {}
    for f in sorted(EXAMPLES.glob("*.yaml")):
        for d in load_file(f):
            out[d.key] = d.resource
    return out


def objs(text: str) -> dict[ObjectKey, Resource]:
    return {d.key: d.resource for d in parse_documents(text, "t.yaml")}


def running(reg: Registry, node: str, ip_base: str = "10.244.1.") -> None:
    view = reg.view()
    states = [(ref, PodState(p.uid, node, f"{ip_base}{i + 2}", "", "Running"))
              for i, (ref, p) in enumerate(sorted(view.pods.items())) if p.node == node]
    assert reg.report_pods(node, states) == []


def test_scheduler_honours_node_name_keeps_previous_and_balances() -> None:
    pods = [(("d", "a"), None), (("d", "b"), None), (("d", "c"), "n9"), (("d", "e"), None)]
    result = assign_nodes(pods, ["n1", "n2"], {("d", "e"): "n1"})
    assert result[("d", "c")] == "n9"
    assert result[("d", "e")] == "n1"
    # Least loaded: n2 has nothing, then tie broken by name.
    assert result[("d", "a")] == "n2"
    assert result[("d", "b")] == "n1"
    assert assign_nodes([(("d", "a"), None)], [], {}) == {}


def test_vips_explicit_previous_and_allocated() -> None:
    vips = allocate_vips([(("d", "a"), None), (("d", "b"), "10.96.0.10"), (("d", "c"), None)],
                         {("d", "c"): "10.96.3.3", ("d", "a"): "10.96.0.10"})
    # b claims .10 explicitly, so a loses its old allocation and gets the next free one.
    assert vips == {("d", "b"): "10.96.0.10", ("d", "c"): "10.96.3.3", ("d", "a"): "10.96.0.11"}


def test_examples_resolve() -> None:
    reg = Registry()
    reg.replace_config(examples())
    reg.register_node("node-1", ["10.244.1.0/24"])
    view = reg.view()
    assert set(view.pods) == {("demo", "sleep"), ("demo", "catalog-0"), ("demo", "catalog-1"),
                              ("demo", "waypoint")}
    wp_pod = view.pods[("demo", "waypoint")]
    assert wp_pod.service_account == "waypoint" and not wp_pod.enrolled and wp_pod.native_hbone
    assert wp_pod.spec.containers[0].command[:5] == [
        "ambient-waypoint", "--name", "waypoint", "--namespace", "demo"]
    assert view.pods[("demo", "sleep")].enrolled
    assert view.pods[("demo", "sleep")].excluded_ports == [9000]
    assert view.pods[("demo", "catalog-0")].identity == \
        "spiffe://cluster.local/ns/demo/sa/catalog"
    assert reg.pod_placement("demo", "catalog-1") == ("node-1", "catalog")
    assert reg.pod_placement("demo", "nope") is None
    catalog = view.services[("demo", "catalog")]
    assert catalog.waypoint == ("demo", "waypoint") and catalog.endpoints == []
    assert catalog.hostnames[-1] == "catalog.demo.svc.cluster.local"
    running(reg, "node-1")
    view = reg.view()
    catalog = view.services[("demo", "catalog")]
    assert sorted(e.ports[0] for e in catalog.endpoints) == [(80, 8080), (80, 8080)]
    assert view.waypoints[("demo", "waypoint")].addresses
    legacy = view.services[("demo", "legacy-db")]
    assert [(e.addresses, e.workload_uid) for e in legacy.endpoints] == [(["192.0.2.10"], "")]


def test_pod_status_with_stale_uid_is_ignored() -> None:
    reg = Registry()
    reg.replace_config(examples())
    reg.register_node("n", [])
    ref = ("demo", "sleep")
    assert reg.report_pods("n", [(ref, PodState("old-uid", "n", "10.0.0.1", "", "Running"))]) == []
    assert not reg.view().pods[ref].ready
    # A node may not report a pod placed elsewhere.
    assert reg.report_pods("other", [(ref, PodState("x", "other", "1.1.1.1"))]) == ["demo/sleep"]


def test_uid_changes_with_the_runnable_spec_only() -> None:
    base = ("apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {a: '%s'}}\n"
            "spec: {nodeName: n, containers: [{name: c, command: [%s]}]}\n")
    reg = Registry()
    reg.replace_config(objs(base % ("1", "sleep")))
    uid1 = reg.view().pods[("default", "p")].uid
    reg.replace_config(objs(base % ("2", "sleep")))
    assert reg.view().pods[("default", "p")].uid == uid1
    reg.replace_config(objs(base % ("2", "cat")))
    assert reg.view().pods[("default", "p")].uid != uid1


def test_enrollment_rules() -> None:
    reg = Registry()
    reg.replace_config(objs(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, annotations: "
        "{ambientmesh.io/dataplane-mode: ambient}}\n---\n"
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: in, namespace: a}\n"
        "spec: {containers: [{name: c, command: [x]}]}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: out, namespace: a, labels: "
        "{ambientmesh.io/dataplane-mode: none}}\nspec: {containers: [{name: c, command: [x]}]}\n"
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: plain, namespace: b}\n"
        "spec: {containers: [{name: c, command: [x]}]}\n"))
    view = reg.view()
    assert view.enrolled_namespaces == {"a"}
    assert {r[1]: p.enrolled for r, p in view.pods.items()} == {
        "in": True, "out": False, "plain": False}


def test_service_waypoint_label_wins_over_namespace() -> None:
    reg = Registry()
    reg.replace_config(objs(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: "
        "{ambientmesh.io/use-waypoint: wp1}}\n---\n"
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp1, "
        "namespace: a}\nspec: {gatewayClassName: ambient-waypoint}\n---\n"
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp2, "
        "namespace: a}\nspec: {gatewayClassName: ambient-waypoint}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: s1, namespace: a}\n"
        "spec: {ports: [{port: 1}]}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: s2, namespace: a, labels: "
        "{ambientmesh.io/use-waypoint: wp2}}\nspec: {ports: [{port: 1}]}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: s3, namespace: a, annotations: "
        "{ambientmesh.io/use-waypoint: none}}\nspec: {ports: [{port: 1}]}\n"))
    view = reg.view()
    assert view.services[("a", "s1")].waypoint == ("a", "wp1")
    assert view.services[("a", "s2")].waypoint == ("a", "wp2")
    assert view.services[("a", "s3")].waypoint is None
    assert view.waypoints[("a", "wp1")].services == [("a", "s1")]


def _pa(ns: str, name: str, mode: str, selector: dict[str, str] | None = None
        ) -> PeerAuthentication:
    spec: dict[str, object] = {"mtls": {"mode": mode}}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    return PeerAuthentication.model_validate({
        "apiVersion": "ambientmesh.io/v1alpha1", "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})


def test_effective_mtls_levels() -> None:
    mesh = _pa("ambient-system", "default", "STRICT")
    ns = _pa("demo", "ns", "PERMISSIVE")
    sel = _pa("demo", "db", "STRICT", {"app": "db"})
    unset = _pa("demo", "unset", "UNSET", {"app": "web"})
    assert effective_mtls("demo", {}, []) == ("PERMISSIVE", "")
    assert effective_mtls("other", {}, [mesh, ns]) == ("STRICT", "ambient-system/default")
    assert effective_mtls("demo", {"app": "web"}, [mesh, ns, unset]) == ("PERMISSIVE", "demo/ns")
    assert effective_mtls("demo", {"app": "db"}, [mesh, ns, sel]) == ("STRICT", "demo/db")
    assert effective_mtls("demo", {"app": "web"}, [mesh, unset]) == \
        ("STRICT", "ambient-system/default")


def _ap(ns: str, name: str, spec: dict[str, object]) -> AuthorizationPolicy:
    return AuthorizationPolicy.model_validate({
        "apiVersion": "ambientmesh.io/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})


def test_authorization_scopes() -> None:
    mesh = _ap("ambient-system", "mesh", {})
    root_sel = _ap("ambient-system", "dbs", {"selector": {"matchLabels": {"app": "db"}}})
    ns_wide = _ap("demo", "all", {"action": "DENY", "rules": [{}]})
    sel = _ap("demo", "web", {"selector": {"matchLabels": {"app": "web"}}})
    other = _ap("other", "x", {})
    l7 = _ap("demo", "l7", {"targetRefs": [{"kind": "Service", "name": "web"}]})
    gw = _ap("demo", "gw", {"targetRefs": [{"kind": "Gateway", "name": "wp"}]})
    policies = [mesh, root_sel, ns_wide, sel, other, l7, gw]
    names = [p.name for p in workload_authorizations("demo", {"app": "web"}, policies)]
    assert names == ["mesh", "all", "web"]
    names = [p.name for p in workload_authorizations("demo", {"app": "db"}, policies)]
    assert names == ["dbs", "mesh", "all"]
    names = [p.name for p in waypoint_authorizations("demo", "wp", [("demo", "web")], policies)]
    assert names == ["gw", "l7"]


def test_state_survives_a_restart(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    reg = Registry(state=state)
    reg.replace_config(examples())
    reg.register_node("n1", ["10.244.1.0/24"])
    reg.register_node("n2", ["10.244.2.0/24"])
    running(reg, "n1")
    before = reg.view()
    again = Registry(state=StateDir(tmp_path))
    # Config arrives in a different order, and a new node exists: nothing moves.
    again.register_node("n0", [])
    again.replace_config(dict(reversed(list(examples().items()))))
    after = again.view()
    assert {r: (p.node, p.uid, p.addresses) for r, p in after.pods.items()} == \
        {r: (p.node, p.uid, p.addresses) for r, p in before.pods.items()}
    assert {r: s.vips for r, s in after.services.items()} == \
        {r: s.vips for r, s in before.services.items()}
    assert not (tmp_path / "node-token.secret").exists()  # only created on demand
    assert len(state.node_token_secret()) >= 16
    assert state.node_token_secret() == StateDir(tmp_path).node_token_secret()
    assert len(state.admin_token()) == 64
    assert state.admin_token() == StateDir(tmp_path).admin_token()
    for name in ("node-token.secret", "admin.token"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600

"""Kubernetes mode: a policy the API server holds but the controller refuses (pruned,
emptied, a typo the CRD kept) is refused whole. Its previous valid version stays in
force; with none to keep, a stand-in that grants nothing takes its place, so a refusal
never turns into "no policy" (allow all) nor silently drops a DENY. (The e2e test
tests/e2e/test_k8s_policy_refused.py checks what a node proxy is then sent.)"""

from __future__ import annotations

import copy
from typing import Any

from controller.kube.refusal_status import desired_condition
from controller.kube.translate import translate
from controller.policy import workload_authorizations
from mesh.config import AuthorizationPolicy, ObjectKey, PeerAuthentication, Resource
from mesh.config.standin import REFUSED_ANNOTATION, is_stand_in

NS = {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "demo"}}
KEY = ObjectKey("AuthorizationPolicy", "demo", "db")
BACKEND = "cluster.local/ns/demo/sa/backend"


def policy(spec: dict[str, Any], name: str = "db") -> dict[str, Any]:
    return {"kind": "AuthorizationPolicy", "apiVersion": "ambientmesh.io/v1alpha1",
            "metadata": {"name": name, "namespace": "demo", "resourceVersion": "7"},
            "spec": spec}


GOOD = policy({"selector": {"matchLabels": {"app": "db"}}, "action": "ALLOW",
               "rules": [{"from": [{"source": {"principals": [BACKEND]}}]}]})


def typo(source: dict[str, Any]) -> dict[str, Any]:
    """GOOD with the typo of issue 20 (`principal:`), as a pruning CRD leaves it
    (`{}`) or as ours keeps it."""
    obj = copy.deepcopy(GOOD)
    obj["spec"]["rules"][0]["from"][0]["source"] = source
    return obj


PRUNED, KEPT = typo({}), typo({"principal": [BACKEND]})


def run(objs: list[dict[str, Any]], previous: dict[ObjectKey, Resource] | None = None
        ) -> tuple[dict[ObjectKey, Resource], dict[ObjectKey, str], dict[ObjectKey, str]]:
    kinds: dict[str, list[dict[str, Any]]] = {"Namespace": [NS]}
    for o in objs:
        kinds.setdefault(o["kind"], []).append(o)
    t = translate(kinds, previous)
    return t.objects, t.rejected, t.in_force


def allowed(objects: dict[ObjectKey, Resource], labels: dict[str, str], principal: str) -> bool:
    """Would L4 let `principal` reach a demo workload with `labels`? (Istio semantics:
    DENY first; with ALLOW policies present one must match.)"""
    pols = workload_authorizations("demo", labels, [o for o in objects.values()
                                                    if isinstance(o, AuthorizationPolicy)])

    def match(p: AuthorizationPolicy) -> bool:
        return any(not r.from_ or any(principal in f.source.principals for f in r.from_)
                   for r in p.spec.rules)

    if any(match(p) for p in pols if p.spec.action == "DENY"):
        return False
    allows = [p for p in pols if p.spec.action == "ALLOW"]
    return not allows or any(match(p) for p in allows)


def test_the_previous_version_stays_in_force() -> None:
    first, rejected, _ = run([GOOD])
    assert not rejected and not allowed(first, {"app": "db"}, "cluster.local/ns/x/sa/y")
    for refused in (PRUNED, KEPT):
        objects, rejected, in_force = run([refused], first)
        assert objects[KEY] is first[KEY]
        assert rejected[KEY].startswith("AuthorizationPolicy demo/db: spec.rules[0].from[0]"
                                        ".source")
        assert in_force[KEY] == "its previous valid version"
        assert allowed(objects, {"app": "db"}, BACKEND)
        assert not allowed(objects, {"app": "db"}, "cluster.local/ns/x/sa/y")


def test_a_refused_allow_with_nothing_to_keep_allows_nothing() -> None:
    objects, rejected, in_force = run([PRUNED])
    stand_in = objects[KEY]
    assert isinstance(stand_in, AuthorizationPolicy) and is_stand_in(stand_in)
    assert stand_in.spec.action == "ALLOW" and stand_in.spec.rules == []
    assert stand_in.spec.selector is not None
    assert stand_in.spec.selector.match_labels == {"app": "db"}  # only its workloads
    assert stand_in.metadata.annotations[REFUSED_ANNOTATION] == rejected[KEY]
    assert in_force[KEY] == "an allow-nothing stand-in"
    assert not allowed(objects, {"app": "db"}, "cluster.local/ns/x/sa/y")  # not allow-all
    assert not allowed(objects, {"app": "db"}, BACKEND)  # grants nothing it said either
    assert allowed(objects, {"app": "web"}, "cluster.local/ns/x/sa/y")  # others untouched


def test_a_refused_deny_with_nothing_to_keep_denies_everything() -> None:
    deny = policy({"selector": {"matchLabels": {"app": "db"}}, "action": "DENY",
                   "rules": [{"from": [{"source": {"namespaces": ["legacy"],
                                                   "notNamespace": ["demo"]}}]}]})
    objects, _, in_force = run([deny])
    stand_in = objects[KEY]
    assert isinstance(stand_in, AuthorizationPolicy)
    assert stand_in.spec.action == "DENY" and len(stand_in.spec.rules) == 1
    assert in_force[KEY] == "a deny-all stand-in"
    assert not allowed(objects, {"app": "db"}, BACKEND)
    assert allowed(objects, {"app": "web"}, BACKEND)


def test_an_unreadable_scope_or_action_falls_back_to_the_whole_namespace() -> None:
    bad_selector = policy({"selector": {"matchLabel": {"app": "db"}}, "action": "ALLOW",
                           "rules": [{}]})
    objects, _, _ = run([bad_selector])
    stand_in = objects[KEY]
    assert isinstance(stand_in, AuthorizationPolicy)
    assert stand_in.spec.selector is None and stand_in.spec.target_refs == []
    assert not allowed(objects, {"app": "web"}, BACKEND)  # a superset of what it meant
    # A stand-in never reaches into another namespace, even if the object asked to.
    elsewhere = policy({"targetRefs": [{"kind": "Service", "name": "db", "namespace": "prod"}],
                        "rules": [{}]})
    objects, rejected, _ = run([elsewhere])
    stand_in = objects[KEY]
    assert isinstance(stand_in, AuthorizationPolicy) and stand_in.spec.target_refs == []
    assert "must be the policy's own namespace (demo)" in rejected[KEY]
    odd_action = policy({"action": "AUDIT", "rules": [{}]})
    objects, _, in_force = run([odd_action])
    assert in_force[KEY] == "a deny-all stand-in"


def test_a_stand_in_follows_the_object_and_a_fix_replaces_it() -> None:
    objects, _, _ = run([PRUNED])
    moved = copy.deepcopy(KEPT)
    moved["spec"]["selector"] = {"matchLabels": {"app": "db2"}}
    objects, _, _ = run([moved], objects)
    stand_in = objects[KEY]
    assert isinstance(stand_in, AuthorizationPolicy) and stand_in.spec.selector is not None
    assert stand_in.spec.selector.match_labels == {"app": "db2"}
    objects, rejected, _ = run([GOOD], objects)
    assert not rejected and not is_stand_in(objects[KEY])
    assert allowed(objects, {"app": "db"}, BACKEND)


def test_a_refused_peer_authentication_is_strict_and_other_kinds_are_left_out() -> None:
    pa = {"kind": "PeerAuthentication", "apiVersion": "ambientmesh.io/v1alpha1",
          "metadata": {"name": "p", "namespace": "demo"},
          "spec": {"selector": {"matchLabels": {"app": "db"}},
                   "mtls": {"mode": "PERMISSIVE"}, "portLevelMtls": {"8080": {}}}}
    tp = {"kind": "TrafficPolicy", "apiVersion": "ambientmesh.io/v1alpha1",
          "metadata": {"name": "t", "namespace": "demo"},
          "spec": {"targetRefs": [{"name": "db"}], "rateLimit": {"requestPerUnit": 5}}}
    objects, rejected, in_force = run([pa, tp])
    stand_in = objects[ObjectKey("PeerAuthentication", "demo", "p")]
    assert isinstance(stand_in, PeerAuthentication) and stand_in.spec.mtls.mode == "STRICT"
    tp_key = ObjectKey("TrafficPolicy", "demo", "t")
    assert tp_key in rejected and tp_key not in objects
    assert in_force[tp_key] == "nothing (it grants nothing when absent)"


def test_the_accepted_condition_is_written_only_when_it_changes() -> None:
    raw = copy.deepcopy(KEPT)
    assert desired_condition(raw, None) is None  # never refused: no write at all
    refused = desired_condition(raw, "AuthorizationPolicy demo/db: why")
    assert refused is not None
    assert (refused["status"], refused["reason"], refused["message"]) == (
        "False", "Refused", "AuthorizationPolicy demo/db: why")
    raw["status"] = {"conditions": [refused]}
    assert desired_condition(raw, "AuthorizationPolicy demo/db: why") is None  # no loop
    assert desired_condition(raw, "AuthorizationPolicy demo/db: other")["message"] == (  # type: ignore[index]
        "AuthorizationPolicy demo/db: other")
    fixed = desired_condition(raw, None)
    assert fixed is not None and fixed["status"] == "True"
    raw["status"] = {"conditions": [fixed]}
    assert desired_condition(raw, None) is None

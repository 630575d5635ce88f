"""Security policies that would grant more than their author wrote are refused whole
(issue 20, finding 2). A real API server prunes unknown fields, so a typo
(`principal:` for `principals:`) can arrive as an empty `source: {}`, which would match
any peer. Istio's validation refuses empty sources, operations, from/to entries and
conditions; so does ours, in both modes, with the object, the field path and why."""

from __future__ import annotations

import pytest

from mesh.config import AuthorizationPolicy, ConfigError, parse_documents, validate_document

HEAD = ("apiVersion: ambientmesh.io/v1alpha1\nkind: AuthorizationPolicy\n"
        "metadata: {name: x, namespace: demo}\n")
PA_HEAD = ("apiVersion: ambientmesh.io/v1alpha1\nkind: PeerAuthentication\n"
           "metadata: {name: x, namespace: demo}\n")
WHERE = "t.yaml doc 1 AuthorizationPolicy demo/x: "


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_documents(text, "t.yaml")
    return [str(i) for i in e.value.issues]


REFUSED = [
    # The pruned typo of the issue: principal -> (pruned) -> source: {}.
    ("spec: {rules: [{from: [{source: {}}]}]}",
     "spec.rules[0].from[0].source: must set at least one field (an empty source would "
     "match any peer)"),
    ("spec: {rules: [{from: [{source: {principals: []}}]}]}",
     "spec.rules[0].from[0].source: must set at least one field (an empty source would "
     "match any peer)"),
    ("spec: {rules: [{from: [{}]}]}",
     "spec.rules[0].from[0].source: required field is missing"),
    ("spec: {rules: [{from: []}]}",
     "spec.rules[0].from: must not be empty (omit from to match any peer)"),
    ("spec: {rules: [{to: [{operation: {}}]}]}",
     "spec.rules[0].to[0].operation: must set at least one field (an empty operation "
     "would match any request)"),
    ("spec: {rules: [{to: [{operation: {ports: []}}]}]}",
     "spec.rules[0].to[0].operation: must set at least one field (an empty operation "
     "would match any request)"),
    ("spec: {rules: [{to: [{}]}]}",
     "spec.rules[0].to[0].operation: required field is missing"),
    ("spec: {rules: [{to: []}]}",
     "spec.rules[0].to: must not be empty (omit to to match any request)"),
    ("spec: {rules: [{when: [{}]}]}",
     "spec.rules[0].when[0].key: required field is missing"),
    ("spec: {rules: [{when: [{key: source.ip}]}]}",
     "spec.rules[0].when[0]: must set values or notValues (a condition without values "
     "would match any request)"),
    ("spec: {rules: [{when: [{key: source.ip, values: [10.0.0.1]}]}]}",
     "spec.rules[0].when: conditions are not supported yet: the rule cannot be enforced "
     "as written, so the policy is refused"),
    ("spec: {rules: [{from: [{source: {principals: ['']}}]}]}",
     "spec.rules[0].from[0].source.principals[0]: must not be empty"),
    ("spec: {rules: [{to: [{operation: {methods: [GET, '']}}]}]}",
     "spec.rules[0].to[0].operation.methods[1]: must not be empty"),
    ("spec: {rules: [{from: [{source: {principal: [cluster.local/ns/demo/sa/a]}}]}]}",
     "spec.rules[0].from[0].source.principal: unknown field"),
    ("spec: {selector: {}}",
     "spec.selector: must set matchLabels (an empty selector selects every workload of "
     "the namespace; omit selector to mean that)"),
    ("spec: {selector: {matchLabels: {}}}",
     "spec.selector: must set matchLabels (an empty selector selects every workload of "
     "the namespace; omit selector to mean that)"),
    ("spec: {selector: {matchLabel: {app: web}}}",
     "spec.selector.matchLabel: unknown field"),
    ("spec: {targetRefs: []}",
     "spec.targetRefs: must not be empty (omit targetRefs to apply the policy to "
     "workloads)"),
    # Istio: "cross namespace referencing is not supported". A policy written in one
    # namespace must not change who reaches another namespace's services.
    ("spec: {targetRefs: [{kind: Service, name: db, namespace: other}]}",
     "spec.targetRefs[0].namespace: must be the policy's own namespace (demo) or unset: a "
     "policy must not change access to another namespace's services (got 'other')"),
    ("spec: {action: DENY}",
     "spec.rules: a DENY policy needs at least one rule (it would never deny; use "
     "rules: [{}] to deny everything)"),
    ("spec: {action: DENY, rules: []}",
     "spec.rules: a DENY policy needs at least one rule (it would never deny; use "
     "rules: [{}] to deny everything)"),
]


@pytest.mark.parametrize(("spec", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_policies_that_would_widen_are_refused(spec: str, message: str) -> None:
    assert errors(HEAD + spec) == [WHERE + message]


def test_the_message_names_object_field_and_why_in_kubernetes_mode_too() -> None:
    raw = {"apiVersion": "ambientmesh.io/v1alpha1", "kind": "AuthorizationPolicy",
           "metadata": {"name": "x", "namespace": "demo"},
           "spec": {"rules": [{"from": [{"source": {}}]}]}}
    with pytest.raises(ConfigError) as e:
        validate_document(raw, "kubernetes AuthorizationPolicy", 1)
    assert str(e.value.first).endswith(
        "AuthorizationPolicy demo/x: spec.rules[0].from[0].source: must set at least one "
        "field (an empty source would match any peer)")


ACCEPTED = [
    "spec: {}",                                   # ALLOW, no rules: allows nothing
    "spec: {action: ALLOW, rules: []}",           # the same, written out
    "spec: {action: ALLOW, rules: [{}]}",         # Istio's deliberate "allow all"
    "spec: {action: DENY, rules: [{}]}",          # deny all
    "spec: {rules: [{from: [{source: {notNamespaces: [demo]}}]}]}",
    "spec: {rules: [{to: [{operation: {notPorts: [22]}}]}]}",
    "spec: {rules: [{when: []}]}",
    "spec: {targetRefs: [{kind: Service, name: db, namespace: demo}]}",
    "spec: {selector: {matchLabels: {app: web}}, rules: [{from: [{source: {ipBlocks: "
    "[10.0.0.0/8]}}], to: [{operation: {ports: [80]}}]}]}",
]


@pytest.mark.parametrize("spec", ACCEPTED)
def test_istio_forms_that_do_not_widen_are_accepted(spec: str) -> None:
    (doc,) = parse_documents(HEAD + spec, "t.yaml")
    assert isinstance(doc.resource, AuthorizationPolicy)


def test_peer_authentication_with_an_emptied_selector_is_refused() -> None:
    # selector: {matchLabel: ...} pruned to {} would turn a workload's PERMISSIVE
    # exception into the whole namespace's mode.
    assert errors(PA_HEAD + "spec: {selector: {}, mtls: {mode: PERMISSIVE}}") == [
        "t.yaml doc 1 PeerAuthentication demo/x: spec.selector: must set matchLabels (an "
        "empty selector selects every workload of the namespace; omit selector to mean "
        "that)"]


PA_NO_MODE = ("spec.mtls.mode: must be set (STRICT, PERMISSIVE, or UNSET to inherit): a "
              "PeerAuthentication without a mode changes nothing, and it is what an API "
              "server leaves of a typo'd mode once it has pruned it")


@pytest.mark.parametrize("spec", ["", "spec: {}\n", "spec: {mtls: {}}\n",
                                  "spec: {selector: {matchLabels: {app: db}}}\n"])
def test_peer_authentication_without_a_mode_is_refused(spec: str) -> None:
    # mtls: {mode: STRICT} with a typo, pruned, is mtls: {} (or no mtls): the
    # workload would silently inherit a weaker mode.
    assert errors(PA_HEAD + spec) == [
        "t.yaml doc 1 PeerAuthentication demo/x: " + PA_NO_MODE]


@pytest.mark.parametrize(("spec", "message"), [
    ("spec: {rules: [{from: [{source: {requestPrincipals: ['*']}}]}]}",
     "spec.rules[0].from[0].source.requestPrincipals: not supported: request principals "
     "come from JWT authentication, which ambient-mesh does not do; the policy is refused "
     "rather than enforced without it"),
    ("spec: {rules: [{from: [{source: {namespaces: [a], remoteIpBlocks: [1.2.3.4]}}]}]}",
     "spec.rules[0].from[0].source.remoteIpBlocks: not supported: remote IPs come from "
     "X-Forwarded-For, which ambient-mesh does not trust; use ipBlocks; the policy is "
     "refused rather than enforced without it"),
])
def test_istio_fields_we_do_not_enforce_are_refused_saying_why(spec: str, message: str) -> None:
    assert errors(HEAD + spec) == [WHERE + message]

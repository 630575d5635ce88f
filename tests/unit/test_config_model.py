"""The config model: every example validates; bad fields give precise messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.config import (
    KINDS,
    ConfigError,
    LabelSelector,
    duration_ms,
    load_file,
    parse_documents,
    resolve_kind,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def one_error(text: str, file: str = "t.yaml") -> str:
    with pytest.raises(ConfigError) as e:
        parse_documents(text, file)
    assert len(e.value.issues) == 1, e.value.issues
    return str(e.value)


def test_every_kind_has_a_valid_example() -> None:
    seen = set()
    for f in EXAMPLES.glob("*.yaml"):
        for doc in load_file(f):
            seen.add(doc.resource.KIND)
            assert doc.file == f.name
    assert seen == set(KINDS)


def test_defaults_namespace_and_clears_it_for_cluster_scoped() -> None:
    docs = parse_documents(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, namespace: x}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 1}]}\n",
        "f.yaml")
    assert [str(d.key) for d in docs] == ["Namespace a", "Service default/s"]
    assert [d.index for d in docs] == [1, 2]


def test_design_example_message() -> None:
    msg = one_error(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\n"
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
        "metadata: {name: catalog, namespace: demo}\n"
        "spec:\n  parentRefs: [{kind: Service, name: catalog}]\n"
        "  rules: [{backendRefs: [{name: a}, {name: b, weight: -5}]}]\n", "demo.yaml")
    assert msg == ("demo.yaml doc 2 HTTPRoute demo/catalog: "
                   "spec.rules[0].backendRefs[1].weight: must be >= 0 (got -5)")


@pytest.mark.parametrize(("doc", "expected"), [
    ("kind: Foo\napiVersion: v1\nmetadata: {name: a}",
     "t.yaml doc 1: kind: unknown kind 'Foo' (known: AuthorizationPolicy, Deployment, "
     "EndpointSlice, Gateway, HTTPRoute, Namespace, PeerAuthentication, Pod, Service, "
     "TrafficPolicy)"),
    ("kind: Pod\napiVersion: v2\nmetadata: {name: a}",
     "t.yaml doc 1 Pod default/a: apiVersion: must be v1 for Pod (got 'v2')"),
    ("kind: Pod\napiVersion: v1\nmetadata: {name: Bad_Name}\n"
     "spec: {containers: [{name: c, command: [x]}]}",
     "t.yaml doc 1 Pod default/Bad_Name: metadata.name: must be a DNS-1123 subdomain (lower "
     "case letters, digits, '-' and '.', at most 253 characters) (got 'Bad_Name')"),
    ("kind: Pod\napiVersion: v1\nmetadata: {name: p}\nspec: {containers: []}",
     "t.yaml doc 1 Pod default/p: spec.containers: must have at least 1 item(s)"),
    ("kind: Pod\napiVersion: v1\nmetadata: {name: p}\n"
     "spec: {containers: [{name: c, command: [x]}, {name: c, command: [y]}]}",
     "t.yaml doc 1 Pod default/p: spec.containers: duplicate container name 'c'"),
    ("kind: Service\napiVersion: v1\nmetadata: {name: s}\n"
     "spec: {ports: [{port: 80, targetPort: 'not a name'}]}",
     "t.yaml doc 1 Service default/s: spec.ports[0].targetPort: must be a port number or an "
     "IANA port name (got 'not a name')"),
    ("kind: Service\napiVersion: v1\nmetadata: {name: s}\n"
     "spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}",
     "t.yaml doc 1 Service default/s: spec.clusterIP: must be an IP address or \"None\" "
     "(got '10.96.0.300')"),
    ("kind: Deployment\napiVersion: apps/v1\nmetadata: {name: d}\n"
     "spec: {selector: {matchLabels: {app: a}}, template: {metadata: {labels: {app: b}}, "
     "spec: {containers: [{name: c, command: [x]}]}}}",
     "t.yaml doc 1 Deployment default/d: spec.selector: does not match "
     "template.metadata.labels"),
    ("kind: HTTPRoute\napiVersion: gateway.networking.k8s.io/v1\nmetadata: {name: r}\n"
     "spec: {parentRefs: [{name: s, kind: Service}], rules: [{matches: [{path: "
     "{type: PathPrefix, value: nope}}]}]}",
     "t.yaml doc 1 HTTPRoute default/r: spec.rules[0].matches[0].path.value: must start "
     "with '/' (got 'nope')"),
    ("kind: HTTPRoute\napiVersion: gateway.networking.k8s.io/v1\nmetadata: {name: r}\n"
     "spec: {parentRefs: [{name: s, kind: Service}], rules: [{filters: [{type: URLRewrite}]}]}",
     "t.yaml doc 1 HTTPRoute default/r: spec.rules[0].filters[0].urlRewrite: required when "
     "type is URLRewrite"),
    ("kind: HTTPRoute\napiVersion: gateway.networking.k8s.io/v1\nmetadata: {name: r}\n"
     "spec: {parentRefs: [{name: s, kind: Service}], "
     "rules: [{filters: [{type: RequestRedirect}]}]}",
     "t.yaml doc 1 HTTPRoute default/r: spec.rules[0].filters[0].type: filter 'RequestRedirect' "
     "is not supported (supported: RequestHeaderModifier, ResponseHeaderModifier, "
     "RequestMirror, URLRewrite)"),
    ("kind: HTTPRoute\napiVersion: gateway.networking.k8s.io/v1\nmetadata: {name: r}\n"
     "spec: {parentRefs: [{name: s, kind: Service}], rules: [{timeouts: {request: 1s, "
     "backendRequest: 2s}}]}",
     "t.yaml doc 1 HTTPRoute default/r: spec.rules[0].timeouts.backendRequest: must not "
     "exceed request (2s > 1s)"),
    ("kind: PeerAuthentication\napiVersion: ambientmesh.io/v1alpha1\nmetadata: {name: p}\n"
     "spec: {mtls: {mode: DISABLE}}",
     "t.yaml doc 1 PeerAuthentication default/p: spec.mtls.mode: DISABLE is not supported in "
     "ambient mode: use PERMISSIVE to accept plaintext"),
    ("kind: AuthorizationPolicy\napiVersion: ambientmesh.io/v1alpha1\nmetadata: {name: p}\n"
     "spec: {selector: {matchLabels: {a: b}}, targetRefs: [{kind: Service, name: s}]}",
     "t.yaml doc 1 AuthorizationPolicy default/p: spec.targetRefs: cannot be combined with "
     "selector; use one of them"),
    ("kind: AuthorizationPolicy\napiVersion: ambientmesh.io/v1alpha1\nmetadata: {name: p}\n"
     "spec: {action: CUSTOM}",
     "t.yaml doc 1 AuthorizationPolicy default/p: spec.action: CUSTOM is not supported (use "
     "ALLOW or DENY)"),
    ("kind: TrafficPolicy\napiVersion: ambientmesh.io/v1alpha1\nmetadata: {name: t}\n"
     "spec: {targetRefs: [{name: s}]}",
     "t.yaml doc 1 TrafficPolicy default/t: spec: must set at least one of retryBudget, "
     "retry, outlierDetection, connectionPool, rateLimit, faultInjection"),
    ("kind: TrafficPolicy\napiVersion: ambientmesh.io/v1alpha1\nmetadata: {name: t}\n"
     "spec: {targetRefs: [{name: s}], outlierDetection: {interval: 10 seconds}}",
     "t.yaml doc 1 TrafficPolicy default/t: spec.outlierDetection.interval: must be a "
     "duration such as 500ms, 2s, 1m or 1h30m (got '10 seconds')"),
    ("kind: TrafficPolicy\napiVersion: ambientmesh.io/v1alpha1\nmetadata: {name: t}\n"
     "spec: {targetRefs: [{name: s}], rateLimit: {requestsPerUnit: 0}}",
     "t.yaml doc 1 TrafficPolicy default/t: spec.rateLimit.requestsPerUnit: must be >= 1 "
     "(got 0)"),
    ("kind: Gateway\napiVersion: gateway.networking.k8s.io/v1\nmetadata: {name: g}\nspec: {}",
     "t.yaml doc 1 Gateway default/g: spec.gatewayClassName: required field is missing"),
    ("kind: EndpointSlice\napiVersion: discovery.k8s.io/v1\nmetadata: {name: e}\n"
     "addressType: IPv4\nendpoints: []",
     "t.yaml doc 1 EndpointSlice default/e: metadata.labels: kubernetes.io/service-name is "
     "required"),
    ("kind: Namespace\napiVersion: v1\nmetadata: {name: n}\nspec: [1]",
     "t.yaml doc 1 Namespace n: spec: must be a mapping"),
    ("[1, 2]", "t.yaml doc 1: document must be a mapping"),
])
def test_precise_messages(doc: str, expected: str) -> None:
    assert one_error(doc) == expected


def test_yaml_syntax_error_names_line() -> None:
    msg = one_error("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [\n")
    assert msg.startswith("t.yaml doc 2: invalid YAML: line 6 column 1:")


def test_all_issues_reported_and_duplicates_refused() -> None:
    text = ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 0}]}\n"
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n---\n"
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n")
    with pytest.raises(ConfigError) as e:
        parse_documents(text, "x.yaml")
    assert [str(i) for i in e.value.issues] == [
        "x.yaml doc 1 Service default/s: spec.ports[0].port: must be >= 1 (got 0)",
        "x.yaml doc 3 Namespace n: duplicate object (also in doc 2)",
    ]


def test_kubernetes_kinds_keep_unknown_fields_our_crds_refuse_them() -> None:
    (doc,) = parse_documents(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  restartPolicy: Always\n"
        "  containers: [{name: c, command: [x], resources: {limits: {cpu: 1}}}]\n", "p.yaml")
    assert doc.resource.to_dict()["spec"]["restartPolicy"] == "Always"
    msg = one_error("apiVersion: ambientmesh.io/v1alpha1\nkind: PeerAuthentication\n"
                    "metadata: {name: p}\nspec: {mtls: {mode: STRICT}, portLevelMtls: {}}")
    assert msg.endswith("spec.portLevelMtls: not supported: ambient mode has no per-port mTLS "
                        "(as Istio ambient); use one PeerAuthentication mode per workload")


def test_resolve_kind_accepts_kubectl_names() -> None:
    assert resolve_kind("po").KIND == "Pod"
    assert resolve_kind("services").KIND == "Service"
    assert resolve_kind("authorizationpolicies").KIND == "AuthorizationPolicy"
    assert resolve_kind("HTTPRoute").KIND == "HTTPRoute"
    with pytest.raises(KeyError, match="unknown kind 'widget'"):
        resolve_kind("widget")


def test_durations_and_selectors() -> None:
    assert duration_ms("1h30m") == 5_400_000
    assert duration_ms("1s500ms") == 1500
    assert duration_ms(None) == 0
    sel = LabelSelector.model_validate({
        "matchLabels": {"app": "a"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["x", "y"]},
                             {"key": "canary", "operator": "DoesNotExist"}]})
    assert sel.matches({"app": "a", "tier": "x"})
    assert not sel.matches({"app": "a", "tier": "z"})
    assert not sel.matches({"app": "a", "tier": "x", "canary": "1"})

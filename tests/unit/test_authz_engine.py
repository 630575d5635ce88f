"""The mesh's one authorization engine (mesh/authz), Istio's semantics tested once:
pushed protobuf policies are compiled as the proxies compile them, then decided at
L4 (node proxy) and L7 (waypoint). What differs between the layers is tested per
layer; the rest runs at both."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from mesh.api import config_pb2 as pb
from mesh.authz import (
    AuthzCollector,
    Layer,
    Policy,
    Request,
    applies_to_service,
    compile_policy,
    evaluate,
    namespace_of,
)

ALICE = "spiffe://cluster.local/ns/frontend/sa/alice"
MALLORY = "spiffe://cluster.local/ns/untrusted/sa/mallory"
LAYERS: tuple[Layer, ...] = ("L4", "L7")


def policy(name: str, action: pb.AuthorizationAction.ValueType, *rules: pb.Rule,
           namespace: str = "demo", targets: tuple[pb.PolicyTarget, ...] = ()) -> Policy:
    return compile_policy(pb.Authorization(namespace=namespace, name=name, action=action,
                                           rules=list(rules), targets=list(targets)))


def src(**fields: list[str]) -> pb.Rule:
    return pb.Rule(sources=[pb.Source(**fields)])


def op(**fields: list[str] | list[int]) -> pb.Rule:
    return pb.Rule(operations=[pb.Operation(**fields)])  # type: ignore[arg-type]


def req(principal: str | None = ALICE, ip: str | None = "10.100.1.5", port: int = 8080,
        method: str = "GET", path: str = "/", host: str = "web.demo:8080") -> Request:
    return Request(principal, method, path, host, port, ip)


def decide(policies: list[Policy], r: Request, layer: Layer) -> bool:
    return evaluate(policies, r, layer).allowed


# ---- order: DENY, then ALLOW, then default ---------------------------------------------

@pytest.mark.parametrize("layer", LAYERS)
def test_no_policy_allows(layer: Layer) -> None:
    v = evaluate([], req(), layer)
    assert v.allowed and v.policy == "" and v.reason == "no ALLOW policy applies"


@pytest.mark.parametrize("layer", LAYERS)
def test_deny_wins_over_allow_and_names_the_policy(layer: Layer) -> None:
    allow_all = policy("allow-all", pb.ALLOW, pb.Rule())
    deny = policy("deny-port", pb.DENY, op(ports=[8080]))
    v = evaluate([allow_all, deny], req(port=8080), layer)
    assert not v.allowed and v.policy == "demo/deny-port"
    assert v.reason == "RBAC: access denied by DENY policy demo/deny-port"
    assert evaluate([allow_all, deny], req(port=9090), layer).policy == "demo/allow-all"


@pytest.mark.parametrize("layer", LAYERS)
def test_allow_policies_deny_everything_they_do_not_match(layer: Layer) -> None:
    allow = policy("allow-alice", pb.ALLOW, src(principals=["cluster.local/ns/frontend/sa/alice"]))
    other = policy("allow-bob", pb.ALLOW, src(principals=["cluster.local/ns/frontend/sa/bob"]))
    assert decide([allow, other], req(ALICE), layer)
    v = evaluate([allow, other], req(MALLORY), layer)
    assert not v.allowed and v.policy == "demo/allow-alice, demo/allow-bob"
    assert "no rule of ALLOW policies demo/allow-alice, demo/allow-bob matches" in v.reason


@pytest.mark.parametrize("layer", LAYERS)
def test_allow_without_rules_denies_all_and_an_empty_rule_allows_all(layer: Layer) -> None:
    """Istio: `spec: {}` (ALLOW, no rules) denies everything; `rules: [{}]` allows all."""
    assert not decide([policy("nothing", pb.ALLOW)], req(), layer)
    assert decide([policy("everything", pb.ALLOW, pb.Rule())], req(principal=None), layer)


@pytest.mark.parametrize("layer", LAYERS)
def test_deny_without_rules_denies_nothing(layer: Layer) -> None:
    assert decide([policy("nothing", pb.DENY)], req(), layer)


# ---- sources -----------------------------------------------------------------------------

@pytest.mark.parametrize("layer", LAYERS)
def test_principals_with_or_without_spiffe_and_wildcards(layer: Layer) -> None:
    for pattern in ("cluster.local/ns/frontend/sa/alice", ALICE, "cluster.local/ns/frontend/*",
                    "*/sa/alice", "*"):
        assert decide([policy("p", pb.ALLOW, src(principals=[pattern]))], req(ALICE), layer), \
            pattern
    for pattern in ("cluster.local/ns/backend/*", "*/sa/bob", "frontend/sa/alice"):
        assert not decide([policy("p", pb.ALLOW, src(principals=[pattern]))], req(ALICE),
                          layer), pattern


@pytest.mark.parametrize("layer", LAYERS)
def test_plaintext_has_no_principal_or_namespace(layer: Layer) -> None:
    any_identity = policy("p", pb.ALLOW, src(principals=["*"]))
    assert not decide([any_identity], req(principal=None), layer)
    assert not decide([policy("ns", pb.ALLOW, src(namespaces=["*"]))], req(principal=None),
                      layer)
    require_mtls = policy("require-mtls", pb.DENY, src(not_principals=["*"]))
    assert not decide([require_mtls], req(principal=None), layer)
    assert decide([require_mtls], req(ALICE), layer)
    not_ns = policy("not-ns", pb.DENY, src(not_namespaces=["x"]))
    assert not decide([not_ns], req(principal=None), layer)


@pytest.mark.parametrize("layer", LAYERS)
def test_namespaces_come_from_the_principal(layer: Layer) -> None:
    ns = policy("ns", pb.ALLOW, src(namespaces=["frontend"]))
    assert decide([ns], req(ALICE), layer)
    assert not decide([ns], req(MALLORY), layer)
    deny = policy("deny-untrusted", pb.DENY, src(not_namespaces=["frontend", "demo"]))
    assert not decide([deny], req(MALLORY), layer) and decide([deny], req(ALICE), layer)


@pytest.mark.parametrize("layer", LAYERS)
def test_ip_blocks_not_forms_and_v4_mapped_callers(layer: Layer) -> None:
    allow = policy("cidr", pb.ALLOW, src(ip_blocks=["10.100.1.0/24"],
                                         not_ip_blocks=["10.100.1.66"]))
    assert decide([allow], req(ip="10.100.1.5"), layer)
    assert not decide([allow], req(ip="10.100.1.66"), layer)
    assert not decide([allow], req(ip="10.100.2.5"), layer)
    deny = policy("deny-lab", pb.DENY, src(ip_blocks=["10.100.1.0/24"]))
    assert not decide([deny], req(ip="::ffff:10.100.1.5"), layer), "v4-mapped is the v4 caller"
    assert not decide([policy("v6", pb.DENY, src(ip_blocks=["fd00:100::/32"]))],
                      req(ip="fd00:100:1::2"), layer)


def test_unknown_source_ip_never_matches_an_allow_and_always_a_deny() -> None:
    allow = policy("cidr", pb.ALLOW, src(ip_blocks=["10.0.0.0/8"]))
    not_allow = policy("not-cidr", pb.ALLOW, src(not_ip_blocks=["10.0.0.0/8"]))
    deny = policy("not-cidr", pb.DENY, src(not_ip_blocks=["10.0.0.0/8"]))
    for ip in (None, "", "garbage"):
        assert not decide([allow], req(ip=ip), "L7")
        assert not decide([not_allow], req(ip=ip), "L7")
        assert not decide([deny], req(ip=ip), "L7")


@pytest.mark.parametrize("layer", LAYERS)
def test_all_fields_of_a_source_must_hold_any_source_may(layer: Layer) -> None:
    rule = pb.Rule(sources=[pb.Source(namespaces=["frontend"], ip_blocks=["10.0.0.0/8"]),
                            pb.Source(principals=[MALLORY])])
    allow = compile_policy(pb.Authorization(namespace="demo", name="combo", action=pb.ALLOW,
                                            rules=[rule]))
    assert decide([allow], req(ALICE, ip="10.1.1.1"), layer)
    assert not decide([allow], req(ALICE, ip="192.0.2.1"), layer)
    assert decide([allow], req(MALLORY, ip="192.0.2.1"), layer)


@pytest.mark.parametrize("layer", LAYERS)
def test_a_rule_needs_one_source_and_one_operation(layer: Layer) -> None:
    rule = pb.Rule(sources=[pb.Source(namespaces=["frontend"])],
                   operations=[pb.Operation(ports=[80]), pb.Operation(ports=[8080])])
    allow = compile_policy(pb.Authorization(namespace="demo", name="r", action=pb.ALLOW,
                                            rules=[rule]))
    assert decide([allow], req(ALICE, port=8080), layer)
    assert not decide([allow], req(ALICE, port=9090), layer)
    assert not decide([allow], req(MALLORY, port=8080), layer)


@pytest.mark.parametrize("layer", LAYERS)
def test_not_ports(layer: Layer) -> None:
    deny = policy("np", pb.DENY, op(not_ports=[80]))
    assert decide([deny], req(port=80), layer)
    assert not decide([deny], req(port=81), layer)


def test_a_peer_identity_that_is_not_a_workload_spiffe_id_is_denied() -> None:
    allow_all = policy("all", pb.ALLOW, pb.Rule())
    for identity in ("spiffe://cluster.local/ns/a/sa/b/ns/c", "cluster.local/ns/a/sa/b", ""):
        v = evaluate([allow_all], req(identity), "L7")
        assert not v.allowed and "not a workload SPIFFE ID" in v.reason, identity


# ---- L7 fields: enforced by the waypoint, fail closed at the node proxy -------------------

def test_allow_rules_with_l7_fields_never_match_at_l4() -> None:
    """Istio ambient: ztunnel omits ALLOW rules with HTTP attributes (more restrictive),
    even when another operation of the same rule is L4 only."""
    rule = pb.Rule(operations=[pb.Operation(ports=[8080]), pb.Operation(methods=["GET"])])
    allow = compile_policy(pb.Authorization(namespace="demo", name="get", action=pb.ALLOW,
                                            rules=[rule]))
    assert not decide([allow], req(method="GET"), "L4")
    assert decide([allow], req(method="GET"), "L7")
    l4_only = policy("port", pb.ALLOW, op(ports=[8080]))
    assert decide([allow, l4_only], req(), "L4")


def test_deny_rules_with_l7_fields_apply_without_them_at_l4() -> None:
    """Istio ambient: a DENY with HTTP attributes is enforced by ztunnel without them
    (more restrictive); its L4 fields still count."""
    deny = policy("no-delete-on-80", pb.DENY, op(ports=[80], methods=["DELETE"]))
    assert not decide([deny], req(port=80, method="GET"), "L4")
    assert decide([deny], req(port=8080, method="GET"), "L4")
    assert decide([deny], req(port=80, method="GET"), "L7")
    assert not decide([deny], req(port=80, method="DELETE"), "L7")
    assert not decide([policy("no-get", pb.DENY, op(not_methods=["GET"]))], req(), "L4")


def test_methods_compile_upper_case_and_match_any_case() -> None:
    deny = policy("no-delete", pb.DENY, op(methods=["delete", "PaTcH"]))
    assert deny.rules[0].operations[0].methods == ("DELETE", "PATCH")
    for method in ("DELETE", "delete", "Patch"):
        assert not decide([deny], req(method=method), "L7"), method
    assert decide([deny], req(method="GET"), "L7")


def test_paths_hosts_and_their_not_forms() -> None:
    paths = policy("api", pb.ALLOW, op(paths=["/api/*", "*.css", "/exact"]))
    for p, ok in (("/api/x", True), ("/site.css", True), ("/exact", True), ("/exactly", False),
                  ("/API/x", False)):
        assert decide([paths], req(path=p), "L7") is ok, p
    hosts = policy("host", pb.ALLOW, op(hosts=["Web.Demo", "*.svc.cluster.local"]))
    assert decide([hosts], req(host="web.demo:8080"), "L7")
    assert decide([hosts], req(host="WEB.demo"), "L7")
    assert decide([hosts], req(host="web.demo.svc.cluster.local"), "L7")
    assert not decide([hosts], req(host="evil.example"), "L7")
    not_secret = policy("ns", pb.DENY, op(not_paths=["/public/*"]))
    assert decide([not_secret], req(path="/public/a"), "L7")
    assert not decide([not_secret], req(path="/secret"), "L7")


# ---- a policy that cannot be compiled: deny-all for what it selects, logged, counted -----

BAD = {
    "bad CIDR": pb.Rule(sources=[pb.Source(ip_blocks=["10.0.0.0/8", "10.1.0.0/16x"])]),
    "bad notIpBlocks": pb.Rule(sources=[pb.Source(not_ip_blocks=["10.1.0.0/33"])]),
    "empty source": pb.Rule(sources=[pb.Source(namespaces=["frontend"]), pb.Source()]),
    "empty operation": pb.Rule(operations=[pb.Operation()]),
    "empty string": pb.Rule(sources=[pb.Source(principals=[""])]),
    "wildcard inside": pb.Rule(operations=[pb.Operation(paths=["/api/*/admin"])]),
    "port 0": pb.Rule(operations=[pb.Operation(ports=[0])]),
    "port 70000": pb.Rule(operations=[pb.Operation(not_ports=[70000])]),
}


def _scrape(policies: list[Policy], name: str) -> float | None:
    registry = CollectorRegistry()
    registry.register(AuthzCollector(lambda: policies))
    return registry.get_sample_value("ambient_authz_uncompilable_policies", {"policy": name})


@pytest.mark.parametrize("action", [pb.ALLOW, pb.DENY])
@pytest.mark.parametrize("case", sorted(BAD))
def test_uncompilable_policy_denies_everything_it_selects(
        case: str, action: pb.AuthorizationAction.ValueType) -> None:
    name = f"bad-{case.replace(' ', '-')}-{action}"
    with capture_logs() as logs:
        p = compile_policy(pb.Authorization(namespace="demo", name=name, action=action,
                                            rules=[BAD[case]]))
    assert p.action == "DENY" and p.error
    for layer in LAYERS:
        for caller in (req(ALICE, ip="10.1.2.3"), req(principal=None, ip="192.0.2.1")):
            v = evaluate([p, policy("allow-all", pb.ALLOW, pb.Rule())], caller, layer)
            assert not v.allowed and v.policy == f"demo/{name}"
            assert "could not be compiled" in v.reason and p.error in v.reason
    assert [e["policy"] for e in logs if e["event"] == "authz.policy_uncompilable"] == \
        [f"demo/{name}"]
    good = policy("good", pb.ALLOW, pb.Rule())
    assert _scrape([p, good, p], f"demo/{name}") == 1
    assert _scrape([p, good], "demo/good") is None


def test_uncompilable_error_names_the_field() -> None:
    p = compile_policy(pb.Authorization(namespace="demo", name="x", action=pb.DENY,
                                        rules=[pb.Rule(), BAD["bad CIDR"]]))
    assert p.error.startswith("spec.rules[1].from[0].source.ipBlocks[1]: not an IP address")


@pytest.mark.parametrize("action", [0, 3, 7])
def test_action_other_than_allow_or_deny_is_uncompilable(action: int) -> None:
    """AUDIT/CUSTOM are refused by the config model; one that arrives anyway (or an
    unset action) must not be read as ALLOW (allows all `rules: [{}]` would) or
    ignored."""
    p = compile_policy(pb.Authorization(namespace="demo", name="a", action=action,  # type: ignore[arg-type]
                                        rules=[pb.Rule()]))
    assert p.error.startswith("spec.action") and not decide([p], req(), "L4")


@pytest.mark.parametrize("where", ["policy", "rule", "source", "operation"])
def test_unknown_fields_are_uncompilable(where: str) -> None:
    """A newer controller's field (a `when`, say) that this proxy would drop silently."""
    unknown = b"\xa0\x06\x01"  # field 100, varint 1
    src_msg = pb.Source(namespaces=["frontend"])
    op_msg = pb.Operation(ports=[8080])
    if where == "source":
        src_msg = pb.Source.FromString(src_msg.SerializeToString() + unknown)
    if where == "operation":
        op_msg = pb.Operation.FromString(op_msg.SerializeToString() + unknown)
    rule = pb.Rule(sources=[src_msg], operations=[op_msg])
    if where == "rule":
        rule = pb.Rule.FromString(rule.SerializeToString() + unknown)
    a = pb.Authorization(namespace="demo", name="u", action=pb.DENY, rules=[rule])
    if where == "policy":
        a = pb.Authorization.FromString(a.SerializeToString() + unknown)
    p = compile_policy(a)
    assert "unknown field number(s) [100]" in p.error
    assert not decide([p], req(MALLORY, port=1), "L7")


def test_bad_targets_make_a_deny_all_for_the_whole_waypoint() -> None:
    p = policy("t", pb.ALLOW, pb.Rule(), targets=(pb.PolicyTarget(kind="HTTPRoute", name="r"),))
    assert p.error.startswith("spec.targetRefs[0]") and p.targets == ()
    assert applies_to_service(p, "demo/any", ("demo", "waypoint"))


def test_good_targets_are_kept_by_the_deny_all() -> None:
    p = policy("t", pb.ALLOW, BAD["bad CIDR"],
               targets=(pb.PolicyTarget(kind="Service", name="catalog"),))
    assert p.error and [(t.kind, t.namespace, t.name) for t in p.targets] == [
        ("Service", "demo", "catalog")]
    assert applies_to_service(p, "demo/catalog", ("demo", "waypoint"))
    assert not applies_to_service(p, "demo/inventory", ("demo", "waypoint"))


# ---- scope at a waypoint -----------------------------------------------------------------

def test_gateway_target_applies_to_every_service_of_that_waypoint() -> None:
    gw = pb.PolicyTarget(kind="Gateway", name="waypoint")
    svc = pb.PolicyTarget(kind="Service", name="catalog")
    both = policy("both", pb.DENY, pb.Rule(), targets=(svc, gw))
    other_gw = policy("other", pb.DENY, pb.Rule(), targets=(
        pb.PolicyTarget(kind="Gateway", namespace="x", name="waypoint"), svc))
    wp = ("demo", "waypoint")
    assert applies_to_service(both, "demo/inventory", wp)
    assert applies_to_service(other_gw, "demo/catalog", wp)
    assert not applies_to_service(other_gw, "demo/inventory", wp)
    assert applies_to_service(other_gw, "demo/inventory", None), "unnamed waypoint: everywhere"
    assert applies_to_service(policy("none", pb.DENY), "demo/inventory", wp)


# ---- principal parsing (the one place) ----------------------------------------------------

def test_namespace_of() -> None:
    assert namespace_of(ALICE) == "frontend"
    assert namespace_of("spiffe://td/ns/ns/sa/ns") == "ns"
    for bad in (None, "", "spiffe://td/ns/a/sa/b/ns/c", "spiffe://td/sa/x/ns/y",
                "cluster.local/ns/a/sa/b"):
        assert namespace_of(bad) is None, bad

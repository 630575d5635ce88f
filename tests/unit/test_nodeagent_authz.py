"""L4 authorization semantics, Istio's, case by case."""

from __future__ import annotations

from mesh.api import config_pb2 as pb
from nodeagent.authz import Connection, evaluate

ALICE = "spiffe://cluster.local/ns/frontend/sa/alice"
MALLORY = "spiffe://cluster.local/ns/untrusted/sa/mallory"


def policy(name: str, action: int, *rules: pb.Rule, namespace: str = "demo") -> pb.Authorization:
    return pb.Authorization(namespace=namespace, name=name, action=action, rules=list(rules))


def conn(principal: str | None = ALICE, ip: str = "10.100.1.5", port: int = 8080) -> Connection:
    return Connection(principal, ip, port)


def test_no_policy_allows() -> None:
    v = evaluate([], conn())
    assert v.allowed and v.policy is None


def test_deny_from_namespace_names_the_policy() -> None:
    deny = policy("deny-untrusted", pb.DENY,
                  pb.Rule(sources=[pb.Source(namespaces=["untrusted"])]))
    assert not evaluate([deny], conn(MALLORY)).allowed
    assert evaluate([deny], conn(MALLORY)).policy == "demo/deny-untrusted"
    assert evaluate([deny], conn(ALICE)).allowed


def test_deny_wins_over_allow() -> None:
    allow_all = policy("allow-all", pb.ALLOW, pb.Rule())
    deny = policy("deny-port", pb.DENY, pb.Rule(operations=[pb.Operation(ports=[8080])]))
    v = evaluate([allow_all, deny], conn(port=8080))
    assert not v.allowed and v.policy == "demo/deny-port"
    assert evaluate([allow_all, deny], conn(port=9090)).allowed


def test_allow_policies_make_everything_else_denied() -> None:
    allow = policy("allow-alice", pb.ALLOW,
                   pb.Rule(sources=[pb.Source(principals=["cluster.local/ns/frontend/sa/alice"])]))
    assert evaluate([allow], conn(ALICE)).allowed
    v = evaluate([allow], conn(MALLORY))
    assert not v.allowed and "demo/allow-alice" in v.reason


def test_allow_with_no_rules_denies_all() -> None:
    assert not evaluate([policy("nothing", pb.ALLOW)], conn()).allowed


def test_principal_wildcards_and_spiffe_prefix() -> None:
    allow = policy("ns-wide", pb.ALLOW,
                   pb.Rule(sources=[pb.Source(principals=["cluster.local/ns/frontend/*"])]))
    assert evaluate([allow], conn(ALICE)).allowed
    allow_full = policy("full", pb.ALLOW, pb.Rule(sources=[pb.Source(principals=[ALICE])]))
    assert evaluate([allow_full], conn(ALICE)).allowed


def test_plaintext_has_no_principal_or_namespace() -> None:
    allow = policy("ns", pb.ALLOW, pb.Rule(sources=[pb.Source(namespaces=["frontend"])]))
    assert not evaluate([allow], conn(principal=None)).allowed
    not_ns = policy("not-ns", pb.DENY, pb.Rule(sources=[pb.Source(not_namespaces=["x"])]))
    assert not evaluate([not_ns], conn(principal=None)).allowed


def test_ip_blocks_and_not_forms() -> None:
    allow = policy("cidr", pb.ALLOW, pb.Rule(sources=[
        pb.Source(ip_blocks=["10.100.1.0/24"], not_ip_blocks=["10.100.1.66/32"])]))
    assert evaluate([allow], conn(ip="10.100.1.5")).allowed
    assert not evaluate([allow], conn(ip="10.100.1.66")).allowed
    assert not evaluate([allow], conn(ip="10.100.2.5")).allowed


def test_all_fields_of_a_source_must_match_any_source_may() -> None:
    rule = pb.Rule(sources=[pb.Source(namespaces=["frontend"], ip_blocks=["10.0.0.0/8"]),
                            pb.Source(principals=[MALLORY])])
    allow = policy("combo", pb.ALLOW, rule)
    assert evaluate([allow], conn(ALICE, ip="10.1.1.1")).allowed
    assert not evaluate([allow], conn(ALICE, ip="192.0.2.1")).allowed
    assert evaluate([allow], conn(MALLORY, ip="192.0.2.1")).allowed


def test_not_ports() -> None:
    deny = policy("np", pb.DENY, pb.Rule(operations=[pb.Operation(not_ports=[80])]))
    assert evaluate([deny], conn(port=80)).allowed
    assert not evaluate([deny], conn(port=81)).allowed


def test_l7_rules_fail_closed_at_l4() -> None:
    l7 = pb.Rule(operations=[pb.Operation(methods=["GET"])])
    assert not evaluate([policy("allow-get", pb.ALLOW, l7)], conn()).allowed
    assert not evaluate([policy("deny-get", pb.DENY, l7)], conn()).allowed

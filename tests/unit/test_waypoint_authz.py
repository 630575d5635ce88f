"""L7 AuthorizationPolicy evaluation with Istio semantics."""

from __future__ import annotations

import ipaddress

from waypoint.authz import (
    AuthzPolicy,
    AuthzRule,
    OperationCondition,
    RequestFacts,
    SourceCondition,
    evaluate,
)

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
OTHER = "spiffe://cluster.local/ns/other/sa/app"


def facts(method: str = "GET", path: str = "/", principal: str | None = SLEEP,
          host: str = "web.default.svc.cluster.local:80", ip: str | None = None) -> RequestFacts:
    return RequestFacts(principal, method, path, host, 80, ip)


DENY_POST_ADMIN = AuthzPolicy("default/deny-admin", "DENY", (
    AuthzRule(operations=(OperationCondition(methods=("POST",), paths=("/admin*",)),)),
))


def test_no_policy_allows() -> None:
    assert evaluate([], facts())


def test_deny_post_admin_but_get_passes() -> None:
    v = evaluate([DENY_POST_ADMIN], facts("POST", "/admin"))
    assert not v and v.policy == "default/deny-admin" and "deny-admin" in v.reason
    assert not evaluate([DENY_POST_ADMIN], facts("POST", "/admin/users"))
    assert evaluate([DENY_POST_ADMIN], facts("GET", "/admin"))
    assert evaluate([DENY_POST_ADMIN], facts("POST", "/public"))


def test_deny_wins_over_allow() -> None:
    allow_all = AuthzPolicy("default/all", "ALLOW", (AuthzRule(),))
    assert not evaluate([allow_all, DENY_POST_ADMIN], facts("POST", "/admin"))
    assert evaluate([allow_all, DENY_POST_ADMIN], facts("POST", "/x"))


def test_allow_list_denies_everything_not_matched() -> None:
    allow_sleep = AuthzPolicy("default/allow-sleep", "ALLOW", (
        AuthzRule(sources=(SourceCondition(principals=("cluster.local/ns/default/sa/sleep",)),)),
    ))
    assert evaluate([allow_sleep], facts(principal=SLEEP))
    assert not evaluate([allow_sleep], facts(principal=OTHER))
    assert not evaluate([allow_sleep], facts(principal=None))


def test_allow_with_no_rules_denies_all() -> None:
    assert not evaluate([AuthzPolicy("default/nothing", "ALLOW")], facts())


def test_deny_with_no_rules_denies_nothing() -> None:
    assert evaluate([AuthzPolicy("default/nothing", "DENY")], facts())


def test_principal_wildcards_and_spiffe_prefix() -> None:
    any_authn = SourceCondition(principals=("*",))
    assert any_authn.matches(facts(principal=SLEEP))
    assert not any_authn.matches(facts(principal=None))
    assert SourceCondition(principals=("cluster.local/ns/default/*",)).matches(facts())
    assert SourceCondition(principals=(SLEEP,)).matches(facts())
    assert SourceCondition(principals=("*/sa/sleep",)).matches(facts())


def test_not_principals_star_denies_plaintext() -> None:
    deny_plain = AuthzPolicy("default/require-mtls", "DENY", (
        AuthzRule(sources=(SourceCondition(not_principals=("*",)),)),
    ))
    assert not evaluate([deny_plain], facts(principal=None))
    assert evaluate([deny_plain], facts(principal=SLEEP))


def test_namespaces_from_principal() -> None:
    c = SourceCondition(namespaces=("default",))
    assert c.matches(facts(principal=SLEEP))
    assert not c.matches(facts(principal=OTHER))
    assert SourceCondition(not_namespaces=("other",)).matches(facts(principal=SLEEP))
    assert not SourceCondition(not_namespaces=("other",)).matches(facts(principal=OTHER))


def test_ip_blocks() -> None:
    c = SourceCondition(ip_blocks=(ipaddress.ip_network("10.0.0.0/8"),))
    assert c.matches(facts(ip="10.1.2.3"))
    assert not c.matches(facts(ip="192.168.1.1"))
    assert not c.matches(facts(ip=None))
    n = SourceCondition(not_ip_blocks=(ipaddress.ip_network("10.0.0.0/8"),))
    assert not n.matches(facts(ip="10.1.2.3"))


def test_operation_fields() -> None:
    op = OperationCondition(methods=("GET", "HEAD"), paths=("/api/*", "*.css", "/exact"),
                            hosts=("web.default.svc.cluster.local",), ports=(80,))
    assert op.matches(facts("GET", "/api/x"))
    assert op.matches(facts("HEAD", "/static/site.css"))
    assert op.matches(facts("GET", "/exact"))
    assert not op.matches(facts("GET", "/exactly"))
    assert not op.matches(facts("POST", "/api/x"))
    assert not op.matches(facts("GET", "/api/x", host="evil"))
    assert OperationCondition(not_methods=("DELETE",)).matches(facts("GET"))
    assert not OperationCondition(not_paths=("/secret",)).matches(facts("GET", "/secret"))
    assert not OperationCondition(not_hosts=("*.cluster.local",)).matches(facts())


def test_rule_needs_from_and_to() -> None:
    rule = AuthzRule(
        sources=(SourceCondition(namespaces=("default",)),),
        operations=(OperationCondition(methods=("GET",)),),
    )
    assert rule.matches(facts("GET"))
    assert not rule.matches(facts("POST"))
    assert not rule.matches(facts("GET", principal=OTHER))


def test_entries_within_from_are_ored() -> None:
    rule = AuthzRule(sources=(SourceCondition(namespaces=("x",)),
                              SourceCondition(namespaces=("default",))))
    assert rule.matches(facts())

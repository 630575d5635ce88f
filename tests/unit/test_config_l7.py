"""The L7 config fields (HTTPRoute URLRewrite; TrafficPolicy retry.allowNonIdempotent,
rateLimit.perSourceIdentity, outlierDetection.consecutiveGatewayErrors): validation
messages name the field, and the snapshot builder carries each value into the
WAYPOINT snapshot."""

from __future__ import annotations

import pytest

from controller.snapshots import route, traffic_policy
from mesh.api import config_pb2 as pb
from mesh.config import ConfigError, HTTPRoute, TrafficPolicy, parse_documents

ROUTE_HEAD = ("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
              "metadata: {name: r, namespace: demo}\n"
              "spec:\n  parentRefs: [{kind: Service, group: '', name: web}]\n  rules:\n")
TP_HEAD = ("apiVersion: ambientmesh.io/v1alpha1\nkind: TrafficPolicy\n"
           "metadata: {name: t, namespace: demo}\n"
           "spec:\n  targetRefs: [{kind: Service, name: web}]\n")


def one_route(rules: str) -> HTTPRoute:
    (doc,) = parse_documents(ROUTE_HEAD + rules, "r.yaml")
    assert isinstance(doc.resource, HTTPRoute)
    return doc.resource


def one_policy(spec: str) -> TrafficPolicy:
    (doc,) = parse_documents(TP_HEAD + spec, "t.yaml")
    assert isinstance(doc.resource, TrafficPolicy)
    return doc.resource


def error(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_documents(text, "x.yaml")
    assert len(e.value.issues) == 1, e.value.issues
    return str(e.value)


# -- URLRewrite ------------------------------------------------------------------------


def test_url_rewrite_prefix_and_hostname_reach_the_snapshot() -> None:
    r = one_route(
        "  - matches: [{path: {type: PathPrefix, value: /shop}}]\n"
        "    filters:\n"
        "    - type: URLRewrite\n"
        "      urlRewrite:\n"
        "        hostname: catalog.demo.svc.cluster.local\n"
        "        path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}\n"
        "    backendRefs: [{name: web, port: 80}]\n")
    (rule,) = route(r).rules
    assert rule.url_rewrite.hostname == "catalog.demo.svc.cluster.local"
    assert rule.url_rewrite.WhichOneof("path") == "prefix_match"
    assert rule.url_rewrite.prefix_match == "/v2"


def test_url_rewrite_full_path_only() -> None:
    r = one_route(
        "  - matches: [{path: {type: Exact, value: /old}}, {path: {type: RegularExpression, "
        "value: '/o.*'}}]\n"
        "    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, "
        "replaceFullPath: /new}}}]\n")
    (rule,) = route(r).rules
    assert rule.HasField("url_rewrite") and rule.url_rewrite.hostname == ""
    assert rule.url_rewrite.WhichOneof("path") == "full_path"
    assert rule.url_rewrite.full_path == "/new"


def test_rule_without_rewrite_has_none() -> None:
    (rule,) = route(one_route("  - backendRefs: [{name: web}]\n")).rules
    assert not rule.HasField("url_rewrite")


def test_prefix_rewrite_without_matches_is_allowed() -> None:
    """No match means the Gateway API default, PathPrefix /: the prefix replaced is /."""
    r = one_route("  - filters: [{type: URLRewrite, urlRewrite: {path: {type: "
                  "ReplacePrefixMatch, replacePrefixMatch: /api}}}]\n")
    assert route(r).rules[0].url_rewrite.prefix_match == "/api"


R = "x.yaml doc 1 HTTPRoute demo/r: spec.rules[0]"


@pytest.mark.parametrize(("rules", "expected"), [
    ("  - filters: [{type: URLRewrite, urlRewrite: {}}]\n",
     f"{R}.filters[0].urlRewrite: must set hostname, path or both"),
    ("  - filters: [{type: URLRewrite, urlRewrite: {hostname: 'Bad_Host:80'}}]\n",
     f"{R}.filters[0].urlRewrite.hostname: must be a precise DNS hostname (lower case "
     "letters, digits, '-' and '.', no wildcard, no port) (got 'Bad_Host:80')"),
    ("  - filters: [{type: URLRewrite, urlRewrite: {hostname: '*.example.com'}}]\n",
     f"{R}.filters[0].urlRewrite.hostname: must be a precise DNS hostname (lower case "
     "letters, digits, '-' and '.', no wildcard, no port) (got '*.example.com')"),
    ("  - filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath}}}]\n",
     f"{R}.filters[0].urlRewrite.path.replaceFullPath: required when type is ReplaceFullPath"),
    ("  - filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, "
     "replaceFullPath: /a, replacePrefixMatch: /b}}}]\n",
     f"{R}.filters[0].urlRewrite.path.replacePrefixMatch: not allowed when type is "
     "ReplaceFullPath (set replaceFullPath)"),
    ("  - filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, "
     "replacePrefixMatch: v2}}}]\n",
     f"{R}.filters[0].urlRewrite.path.replacePrefixMatch: must start with '/' (got 'v2')"),
    ("  - filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, "
     "replaceFullPath: '/a?b=1'}}}]\n",
     f"{R}.filters[0].urlRewrite.path.replaceFullPath: must be a path without query, "
     "fragment or whitespace (got '/a?b=1')"),
    ("  - filters: [{type: URLRewrite, urlRewrite: {path: {type: Regex, "
     "replaceFullPath: /a}}}]\n",
     f"{R}.filters[0].urlRewrite.path.type: must be one of 'ReplaceFullPath' or "
     "'ReplacePrefixMatch' (got 'Regex')"),
    ("  - filters: [{type: URLRewrite, urlRewrite: {hostname: a.b}}, "
     "{type: URLRewrite, urlRewrite: {hostname: c.d}}]\n",
     f"{R}.filters[1]: at most one URLRewrite filter per rule"),
    ("  - matches: [{path: {type: Exact, value: /a}}]\n"
     "    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, "
     "replacePrefixMatch: /b}}}]\n",
     f"{R}.filters[0].urlRewrite.path: ReplacePrefixMatch needs exactly one match with a "
     "PathPrefix path (the prefix it replaces); use ReplaceFullPath or split the rule"),
    ("  - matches: [{path: {value: /a}}, {path: {value: /b}}]\n"
     "    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, "
     "replacePrefixMatch: /c}}}]\n",
     f"{R}.filters[0].urlRewrite.path: ReplacePrefixMatch needs exactly one match with a "
     "PathPrefix path (the prefix it replaces); use ReplaceFullPath or split the rule"),
    ("  - matches: [{headers: [{name: x, value: y}]}]\n"
     "    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, "
     "replacePrefixMatch: /c}}}]\n",
     f"{R}.filters[0].urlRewrite.path: ReplacePrefixMatch needs exactly one match with a "
     "PathPrefix path (the prefix it replaces); use ReplaceFullPath or split the rule"),
])
def test_url_rewrite_errors_name_the_field(rules: str, expected: str) -> None:
    assert error(ROUTE_HEAD + rules) == expected


# -- TrafficPolicy ---------------------------------------------------------------------------


def test_new_traffic_policy_fields_reach_the_snapshot() -> None:
    tp = traffic_policy(one_policy(
        "  retry: {allowNonIdempotent: true}\n"
        "  rateLimit: {requestsPerUnit: 5, perSourceIdentity: true}\n"
        "  outlierDetection: {consecutive5xxErrors: 7, consecutiveGatewayErrors: 2, "
        "maxEjectionPercent: 25}\n"))
    assert tp.HasField("retry") and tp.retry.allow_non_idempotent
    assert tp.rate_limit.per_source and tp.rate_limit.requests_per_unit == 5
    od = tp.outlier_detection
    assert od.HasField("consecutive_5xx") and od.consecutive_5xx == 7
    assert od.consecutive_gateway_errors == 2 and od.max_ejection_percent == 25


def test_defaults_keep_the_old_behaviour() -> None:
    tp = traffic_policy(one_policy(
        "  rateLimit: {requestsPerUnit: 5}\n  outlierDetection: {}\n"))
    assert not tp.HasField("retry")
    assert not tp.rate_limit.per_source
    od = tp.outlier_detection
    assert od.consecutive_5xx == 5 and od.consecutive_gateway_errors == 0
    assert od.max_ejection_percent == 10


def test_retry_section_alone_is_a_policy_and_false_is_carried() -> None:
    tp = traffic_policy(one_policy("  retry: {allowNonIdempotent: false}\n"))
    assert tp.HasField("retry") and not tp.retry.allow_non_idempotent


def test_gateway_errors_only_keeps_an_explicit_zero() -> None:
    tp = traffic_policy(one_policy(
        "  outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 3}\n"))
    od = tp.outlier_detection
    # proto3 optional: 0 is sent, so the waypoint tells "off" from "unset = 5".
    assert od.HasField("consecutive_5xx") and od.consecutive_5xx == 0
    decoded = pb.TrafficPolicy.FromString(tp.SerializeToString()).outlier_detection
    assert decoded.HasField("consecutive_5xx") and decoded.consecutive_gateway_errors == 3


T = "x.yaml doc 1 TrafficPolicy demo/t: spec"


@pytest.mark.parametrize(("spec", "expected"), [
    ("  retry: {allowNonIdempotent: maybe}\n",
     f"{T}.retry.allowNonIdempotent: must be true or false (got 'maybe')"),
    ("  retry: {allowNonIdempotant: true}\n",
     f"{T}.retry.allowNonIdempotant: unknown field"),
    ("  rateLimit: {requestsPerUnit: 5, perSourceIdentity: yes please}\n",
     f"{T}.rateLimit.perSourceIdentity: must be true or false (got 'yes please')"),
    ("  rateLimit: {requestsPerUnit: 5, perSource: true}\n",
     f"{T}.rateLimit.perSource: unknown field"),
    ("  outlierDetection: {consecutiveGatewayErrors: -1}\n",
     f"{T}.outlierDetection.consecutiveGatewayErrors: must be >= 0 (got -1)"),
    ("  outlierDetection: {consecutive5xxErrors: 0}\n",
     f"{T}.outlierDetection.consecutiveGatewayErrors: must be >= 1 when "
     "consecutive5xxErrors is 0 (0 switches 5xx ejection off, so nothing would ever be "
     "ejected)"),
    ("  outlierDetection: {consecutive5xxErrors: 3, consecutiveGatewayErrors: 3}\n",
     f"{T}.outlierDetection.consecutiveGatewayErrors: must be below consecutive5xxErrors "
     "(3 >= 3): gateway errors also count as 5xx errors, so it would never act; lower it, "
     "or set consecutive5xxErrors: 0 to eject on gateway errors only"),
    ("  outlierDetection: {consecutiveGatewayErrors: 9}\n",
     f"{T}.outlierDetection.consecutiveGatewayErrors: must be below consecutive5xxErrors "
     "(9 >= 5): gateway errors also count as 5xx errors, so it would never act; lower it, "
     "or set consecutive5xxErrors: 0 to eject on gateway errors only"),
    ("  outlierDetection: {maxEjectionPercent: 101}\n",
     f"{T}.outlierDetection.maxEjectionPercent: must be <= 100 (got 101)"),
])
def test_traffic_policy_errors_name_the_field(spec: str, expected: str) -> None:
    assert error(TP_HEAD + spec) == expected

"""HTTPRoute matching and Gateway API precedence."""

from __future__ import annotations

import pytest

from waypoint.messages import RequestHead
from waypoint.routing import (
    BackendTarget,
    HeaderModifier,
    PathMatch,
    RouteMatch,
    RouteRule,
    RouteTable,
    UrlRewrite,
    ValueMatch,
)


def req(target: str = "/", method: str = "GET", headers: list[tuple[str, str]] | None = None
        ) -> RequestHead:
    return RequestHead(method, target, "svc", headers or [])


def rule(name: str, *matches: RouteMatch, port: int | None = None) -> RouteRule:
    return RouteRule(f"default/{name}", 0, tuple(matches), (BackendTarget(name + ".default", 80),),
                     port=port)


@pytest.mark.parametrize(("prefix", "path", "ok"), [
    ("/", "/anything", True),
    ("/foo", "/foo", True),
    ("/foo", "/foo/", True),
    ("/foo", "/foo/bar", True),
    ("/foo", "/foobar", False),
    ("/foo/", "/foo", True),
    ("/foo/", "/foo/x", True),
    ("/foo", "/fo", False),
])
def test_path_prefix_is_element_wise(prefix: str, path: str, ok: bool) -> None:
    assert PathMatch("PathPrefix", prefix).matches(path) is ok


def test_exact_and_regex_paths() -> None:
    assert PathMatch("Exact", "/a").matches("/a")
    assert not PathMatch("Exact", "/a").matches("/a/")
    rx = PathMatch("RegularExpression", r"/users/\d+")
    assert rx.matches("/users/42")
    assert not rx.matches("/users/42/x")  # full match, not search
    assert not rx.matches("/users/abc")


def test_query_string_is_not_part_of_the_path() -> None:
    assert RouteMatch(PathMatch("Exact", "/a")).matches(req("/a?x=1"))


def test_header_query_and_method_conditions_all_hold() -> None:
    m = RouteMatch(
        headers=(ValueMatch("X-Version", "v2"),),
        query=(ValueMatch("debug", r"t.*", regex=True),),
        method="POST",
    )
    good = req("/x?debug=true", "POST", [("x-version", "v2")])
    assert m.matches(good)
    assert not m.matches(req("/x?debug=true", "GET", [("x-version", "v2")]))
    assert not m.matches(req("/x?debug=false", "POST", [("x-version", "v2")]))
    assert not m.matches(req("/x?debug=true", "POST", [("x-version", "v1")]))
    assert not m.matches(req("/x", "POST", [("x-version", "v2")]))


def test_exact_beats_longer_prefix_beats_shorter_prefix() -> None:
    table = RouteTable([
        rule("root", RouteMatch(PathMatch("PathPrefix", "/"))),
        rule("api", RouteMatch(PathMatch("PathPrefix", "/api"))),
        rule("exact", RouteMatch(PathMatch("Exact", "/api/v1"))),
    ])
    pick = lambda t: table.select(req(t)).rule.route  # type: ignore[union-attr]  # noqa: E731
    assert pick("/api/v1") == "default/exact"
    assert pick("/api/v2") == "default/api"
    assert pick("/other") == "default/root"


def test_method_then_headers_then_query_break_ties() -> None:
    table = RouteTable([
        rule("plain", RouteMatch()),
        rule("query", RouteMatch(query=(ValueMatch("a", "1"),))),
        rule("header", RouteMatch(headers=(ValueMatch("h", "1"),))),
        rule("method", RouteMatch(method="GET")),
    ])
    both = req("/?a=1", "GET", [("h", "1")])
    assert table.select(both).rule.route == "default/method"  # type: ignore[union-attr]
    assert table.select(req("/?a=1", "PUT", [("h", "1")])).rule.route == "default/header"  # type: ignore[union-attr]
    assert table.select(req("/?a=1", "PUT")).rule.route == "default/query"  # type: ignore[union-attr]
    assert table.select(req("/", "PUT")).rule.route == "default/plain"  # type: ignore[union-attr]


def test_equal_precedence_keeps_given_order() -> None:
    table = RouteTable([rule("first", RouteMatch()), rule("second", RouteMatch())])
    assert table.select(req("/")).rule.route == "default/first"  # type: ignore[union-attr]


def test_rule_without_matches_matches_everything() -> None:
    table = RouteTable([rule("catchall")])
    assert table.select(req("/deep/path", "DELETE")) is not None


def test_no_match_returns_none() -> None:
    table = RouteTable([rule("only", RouteMatch(PathMatch("Exact", "/x")))])
    assert table.select(req("/y")) is None


def test_rule_bound_to_a_port_skips_other_ports() -> None:
    table = RouteTable([rule("p80", RouteMatch(), port=80), rule("any", RouteMatch())])
    assert table.select(req("/"), port=80).rule.route == "default/p80"  # type: ignore[union-attr]
    assert table.select(req("/"), port=81).rule.route == "default/any"  # type: ignore[union-attr]


def test_header_modifier_set_add_remove() -> None:
    h = [("a", "1"), ("b", "2"), ("c", "3")]
    HeaderModifier(set=(("A", "x"),), add=(("b", "more"),), remove=("c",)).apply(h)
    assert sorted(h) == [("a", "x"), ("b", "2"), ("b", "more")]


def test_url_rewrite_prefix_and_full_path_keep_query() -> None:
    r = req("/api/users?id=1")
    UrlRewrite(prefix="/v2").apply(r, PathMatch("PathPrefix", "/api"))
    assert r.target == "/v2/users?id=1"
    r = req("/api")
    UrlRewrite(prefix="/").apply(r, PathMatch("PathPrefix", "/api"))
    assert r.target == "/"
    r = req("/anything?q")
    UrlRewrite(full_path="/fixed", hostname="other").apply(r, PathMatch())
    assert (r.target, r.authority) == ("/fixed?q", "other")

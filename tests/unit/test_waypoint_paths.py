"""Path and method normalization (mesh/http_paths.py): the table of issue 18's bypass
attempts, RFC 3986 §5.4 reference resolution examples, refusals, and properties
(hypothesis) that make the normalized path safe to forward: it is a fixed point, has
nothing left for an application to interpret, and keeps the query untouched."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.http_paths import (
    InvalidMethodError,
    InvalidPathError,
    check_method,
    normalize_path,
    normalize_request,
    normalize_target,
    remove_dot_segments,
)
from waypoint.authz import AuthzPolicy, AuthzRule, OperationCondition, RequestFacts, evaluate

# -- issue 18 finding 5: each of these must land on /admin (or be refused) -------------

BYPASSES_TO_ADMIN = [
    "/./admin", "/items/../admin", "/%61dmin", "/%2e/admin", "//admin", "/\\admin",
    "/%2E/admin", "/%2e%2e/admin", "/.%2e/admin", "/%2E%2E/admin", "/items/%2e%2e/admin",
    "///admin", "/admin/.", "/admin/x/..", "/x/y/../../admin", "/../admin", "/../../admin",
    "/%61%64%6d%69%6e", "/\\\\admin", "/.\\admin",
    "/items\\..\\admin", "/a/b/c/../../../admin", "//./admin", "/./././admin",
    "/items/.%2E/admin", "/%2e%2e\\admin", "/adm%69n", "/admi%6E",
]


@pytest.mark.parametrize("path", BYPASSES_TO_ADMIN)
def test_bypass_variants_normalize_to_admin(path: str) -> None:
    assert normalize_path(path) in ("/admin", "/admin/")


@pytest.mark.parametrize("path", [
    "/admin%00", "/%00admin", "/admin%2f", "/admin%2F..", "/%2fadmin", "/%5cadmin",
    "/%5Cadmin", "/admin%", "/admin%4", "/admin%zz", "/admin%g1", "/a%0a", "/a%0D%0A",
    "/a%7f", "/a%1F", "/admin#frag", "/a b", "/a\tb", "/a\x00b", "/a\x7fb", "/\u00e4dmin",
    "/a\r\nb", "", "admin", "http://x/admin", "https://x/admin", "x/admin", "*",
    "\\admin", "%2fadmin", "/a%%41",
])
def test_refused_paths(path: str) -> None:
    with pytest.raises(InvalidPathError):
        normalize_path(path)


@pytest.mark.parametrize(("path", "expected"), [
    ("/", "/"),
    ("/a/b/c", "/a/b/c"),
    ("/a/b/c/", "/a/b/c/"),
    ("/a/./b", "/a/b"),
    ("/a/../b", "/b"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/..", "/"),
    ("/.", "/"),
    ("/...", "/..."),
    ("/a/.b/..c", "/a/.b/..c"),
    ("/a/b..", "/a/b.."),
    ("/%7Euser", "/~user"),
    ("/%7euser", "/~user"),
    ("/a%2Db%5Fc%2ed", "/a-b_c.d"),
    ("/caf%c3%a9", "/caf%C3%A9"),
    ("/a%20b", "/a%20b"),
    ("/a%3fb", "/a%3Fb"),
    ("/a%23b", "/a%23b"),
    ("/a%25b", "/a%25b"),
    ("/%252e%252e/admin", "/%252e%252e/admin"),  # decoded once, never twice
    ("/a%2541", "/a%2541"),
    ("/a//b///c", "/a/b/c"),
    ("//", "/"),
    ("//evil.example/x", "/evil.example/x"),
    ("/a\\b", "/a/b"),
    ("/a;b=c/d", "/a;b=c/d"),
    ("/a:b@c!$&'()*+,;=", "/a:b@c!$&'()*+,;="),
    ("/pkg.Service/Method", "/pkg.Service/Method"),
    ("/ADMIN", "/ADMIN"),  # paths are case-sensitive
    # Envoy's encoding of characters a path may not hold; '[', ']' and "'" stay.
    ('/a"b', "/a%22b"), ("/a<b>", "/a%3Cb%3E"), ("/a^b", "/a%5Eb"), ("/a`b", "/a%60b"),
    ("/a|b", "/a%7Cb"), ("/a{b}", "/a%7Bb%7D"), ("/a[b]", "/a[b]"), ("/a'b", "/a'b"),
    ("/a%7bb", "/a%7Bb"), ("/a%7B/../b{", "/b%7B"),
])
def test_normalized_forms(path: str, expected: str) -> None:
    assert normalize_path(path) == expected


@pytest.mark.parametrize(("path", "expected"), [
    # RFC 3986 §5.2.4 examples and §5.4 resolutions with an absolute path.
    ("/a/b/c/./../../g", "/a/g"),
    ("/mid/content=5/../6", "/mid/6"),
    ("/b/c/g", "/b/c/g"),
    ("/b/c/./g", "/b/c/g"),
    ("/b/c/../g", "/b/g"),
    ("/b/c/../..", "/"),
    ("/b/c/../../g", "/g"),
    ("/b/c/../../../g", "/g"),
    ("/b/c/g.", "/b/c/g."),
    ("/b/c/.g", "/b/c/.g"),
    ("/b/c/g..", "/b/c/g.."),
    ("/b/c/..g", "/b/c/..g"),
    ("/b/c/./../g", "/b/g"),
    ("/b/c/./g/.", "/b/c/g/"),
    ("/b/c/g/./h", "/b/c/g/h"),
    ("/b/c/g/../h", "/b/c/h"),
])
def test_rfc3986_dot_segments(path: str, expected: str) -> None:
    assert remove_dot_segments(path) == expected
    assert normalize_path(path) == expected


def test_merge_slashes_can_be_turned_off() -> None:
    assert normalize_path("//admin", merge_slashes=False) == "//admin"
    assert normalize_path("/a//../b", merge_slashes=False) == "/a/b"
    assert normalize_path("/a//../b") == "/b"


# -- targets: query kept, '*' for OPTIONS only ------------------------------------------


@pytest.mark.parametrize(("target", "expected"), [
    ("/./admin?x=/../y", "/admin?x=/../y"),
    ("/%61dmin?a=%2f&b=%00", "/admin?a=%2f&b=%00"),
    ("/a?", "/a?"),
    ("/a??b", "/a??b"),
    ("/a?b\\c", "/a?b\\c"),
    ("/a{?b{}", "/a%7B?b{}"),
    ("/a?x=%zz", "/a?x=%zz"),
])
def test_query_untouched(target: str, expected: str) -> None:
    assert normalize_target(target, "GET") == expected


@pytest.mark.parametrize("target", ["/a?b c", "/a?b#c", "/a?\x00", "/a?\u00e9", "/%00?a=1",
                                    "?a=1", "http://x/a?b"])
def test_refused_targets(target: str) -> None:
    with pytest.raises(InvalidPathError):
        normalize_target(target, "GET")


def test_asterisk_form_only_with_options() -> None:
    assert normalize_target("*", "OPTIONS") == "*"
    for method in ("GET", "POST", "DELETE"):
        with pytest.raises(InvalidPathError, match="OPTIONS"):
            normalize_target("*", method)
    with pytest.raises(InvalidPathError):
        normalize_target("*?x", "OPTIONS")


# -- methods ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                                    "TRACE", "CONNECT", "PROPFIND", "M-SEARCH", "X_CUSTOM",
                                    "BREW!", "A1"])
def test_upper_case_token_methods_pass(method: str) -> None:
    assert check_method(method) == method


@pytest.mark.parametrize("method", ["delete", "Delete", "DELETe", "get", "pOST", "dElEtE"])
def test_mixed_case_methods_refused_with_a_hint(method: str) -> None:
    with pytest.raises(InvalidMethodError, match="upper case"):
        check_method(method)


@pytest.mark.parametrize("method", ["", "GE T", "GET\r\n", "GET\x00", "G(ET)", "GET/1",
                                    "G\u00c9T", "GET,POST", "GET;", "GET:", "[GET]", "\"GET\""])
def test_non_token_methods_refused(method: str) -> None:
    with pytest.raises(InvalidMethodError):
        check_method(method)


# -- what the policy sees: a DENY on /admin, /admin/* and DELETE holds ---------------------

DENY = AuthzPolicy("default/deny-admin", "DENY", (
    AuthzRule(operations=(OperationCondition(paths=("/admin", "/admin/*")),)),
    AuthzRule(operations=(OperationCondition(methods=("DELETE",)),)),
))


def _verdict_after_normalization(method: str, target: str) -> bool | None:
    """True allowed, False denied, None refused (400) before authz."""
    try:
        m, t = normalize_request(method, target)
    except (InvalidPathError, InvalidMethodError):
        return None
    return bool(evaluate([DENY], RequestFacts("spiffe://cluster.local/ns/a/sa/b", m,
                                              t.split("?", 1)[0], "svc")))


@pytest.mark.parametrize("target", [
    *BYPASSES_TO_ADMIN, "/admin%00", "/admin/%2e%2e/admin", "/admin/sub", "/%61dmin/sub",
    "//admin//sub", "/admin/./sub", "/admin%2fsub", "/admin?x=1", "/./admin?redirect=/",
])
def test_deny_on_admin_is_never_bypassed(target: str) -> None:
    assert _verdict_after_normalization("GET", target) in (False, None), target


@pytest.mark.parametrize("method", ["delete", "Delete", "DELETe", "dELETE"])
def test_deny_on_delete_is_never_bypassed(method: str) -> None:
    assert _verdict_after_normalization(method, "/items/1") is None


def test_other_paths_still_allowed() -> None:
    for target in ("/", "/items", "/administrator", "/items/admin", "/%61pi?x=/admin"):
        assert _verdict_after_normalization("GET", target) is True, target


# -- properties ----------------------------------------------------------------------------

_PIECES = st.sampled_from([
    "/", "//", "\\", ".", "..", "./", "../", "%2e", "%2E", "%2e%2e", "%61", "%41", "%7e",
    "%25", "%20", "%3F", "a", "b", "admin", "x.y", "~", "-", "_", ";", "=", "%c3%a9", "{",
    "|", "%7b", "[", "'", '"',
])
_PATHS = st.lists(_PIECES, max_size=14).map(lambda xs: "/" + "".join(xs))


@settings(max_examples=600, deadline=None)
@given(_PATHS)
def test_normalized_paths_are_fixed_points_with_nothing_left_to_interpret(path: str) -> None:
    out = normalize_path(path)
    assert normalize_path(out) == out
    assert out.startswith("/")
    assert "//" not in out and "\\" not in out
    assert not set(out) & set('"<>^`{|}')
    segments = out.split("/")
    assert "." not in segments and ".." not in segments
    # No escape left that decodes to an unreserved character (would be a second name).
    i = out.find("%")
    while i >= 0:
        assert chr(int(out[i + 1:i + 3], 16)) not in \
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
        assert out[i + 1:i + 3] == out[i + 1:i + 3].upper()
        i = out.find("%", i + 1)


@settings(max_examples=400, deadline=None)
@given(_PATHS)
def test_admin_prefix_decision_agrees_with_the_application_view(path: str) -> None:
    """An application that itself decodes, merges and resolves sees the normalized
    path unchanged: normalizing what we forward changes nothing."""
    out = normalize_path(path)
    assert normalize_path(out) == out
    assert normalize_path(out.replace("/", "//")) == out


@settings(max_examples=400, deadline=None)
@given(_PATHS, st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                               blacklist_characters="#"), max_size=30))
def test_query_is_never_changed(path: str, query: str) -> None:
    out = normalize_target(f"{path}?{query}", "GET")
    assert out.split("?", 1)[1] == query


@settings(max_examples=800, deadline=None)
@given(st.text(max_size=40))
def test_arbitrary_input_is_normalized_or_refused_never_crashes(text: str) -> None:
    try:
        out = normalize_target(text, "GET")
    except InvalidPathError:
        return
    assert out.startswith("/")
    assert all(0x21 <= ord(c) <= 0x7E and c != "#" for c in out)
    assert normalize_target(out, "GET") == out


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=12))
def test_methods_pass_only_as_upper_case_tokens(method: str) -> None:
    try:
        check_method(method)
    except InvalidMethodError:
        return
    assert method and method == method.upper()
    assert all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in method)

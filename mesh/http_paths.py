"""Request-target and method normalization for L7 decisions (sans I/O).

Why: an L7 policy (`paths: ["/admin", "/admin/*"]`) and a route match compare
strings, while the application behind the waypoint interprets the path: it removes
`.`/`..` segments, decodes `%61` to `a`, often merges `//` and (on some stacks) reads
`\\` as `/`. If the waypoint matched the raw string, `/%61dmin` or `/./admin` would
miss a DENY on `/admin` and still reach `/admin` in the application. So the
waypoint normalizes first, matches the normalized path *and forwards it*: the
application then receives a path that has nothing left to interpret (no dot
segments, no decodable escapes, no backslash, no `//`), and sees exactly what the
policy saw.

What is done (Istio's default `BASE` normalization plus `MERGE_SLASHES`, the same
steps as Envoy's `normalize_path` + `merge_slashes`):

1. every character must be printable ASCII (no control characters, space, DEL or
   raw non-ASCII bytes) and no `#` (a fragment never belongs to a request target);
2. percent-escapes are decoded once when they encode an unreserved character
   (RFC 3986 §2.3: `A-Z a-z 0-9 - . _ ~`); other escapes are kept with upper-case
   hex digits (RFC 3986 §6.2.2.1); the characters `"<>^`{|}`, not allowed in a path,
   are percent-encoded (as Envoy does);
3. `\\` becomes `/`;
4. runs of `/` become one `/` (`merge_slashes`, on by default);
5. dot segments are removed (RFC 3986 §5.2.4); `..` never climbs above `/`.

What is refused (the request gets 400, nothing reaches the application): an escape
that is not `%` + two hex digits, an escaped NUL or other control character
(`%00`-`%1F`, `%7F`), an escaped slash or backslash (`%2F`, `%5C`: whether the
application splits on them is unknowable; Istio's default also rejects them), a
target that does not start with `/` (absolute-form over HTTP/2 `:path`, empty
path), except `*` with OPTIONS.

The query string is not normalized (an application decodes it by its own rules and
policies do not match on it); it is only checked for forbidden characters.

Methods: RFC 9110 tokens made only of upper-case letters and the other token
characters. Methods are case-sensitive (RFC 9110 §9.1), so `delete` is a different
method from `DELETE` to the protocol, but some applications treat them alike: a DENY
on `DELETE` must not be bypassed by `delete`, so anything not upper-case is refused
(HTTP/1.1's parser already refuses it; this covers HTTP/2's `:method`)."""

from __future__ import annotations

import re

UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# tchar (RFC 9110 §5.6.2) without the lower-case letters.
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Z]+")
# A character that may appear as-is in a request target: printable ASCII but '#'.
_FORBIDDEN = re.compile(r"[^\x21-\x7e]|#")
_ESCAPED_SLASHES = frozenset({0x2F, 0x5C})
_SLASHES = re.compile(r"/{2,}")
# Printable ASCII that RFC 3986 does not allow in a path and Envoy's normalize_path
# percent-encodes (it leaves '[', ']' and '\'' as they are): encoded the same way, so
# a policy written for Istio matches the same requests here.
_ENCODED = {c: f"%{ord(c):02X}" for c in '"<>^`{|}'}
_NEEDS_PASS = re.compile('[%"<>^`{|}]')


class RequestNormalizationError(ValueError):
    """The request cannot be normalized safely: it is refused with 400. The message
    says what was wrong, for the access log and the client."""


class InvalidPathError(RequestNormalizationError):
    """The request target (path) cannot be normalized safely."""


class InvalidMethodError(RequestNormalizationError):
    """The method is not an upper-case RFC 9110 token."""


def check_method(method: str) -> str:
    """Return `method` if it is an upper-case token; raise InvalidMethodError."""
    if not _METHOD.fullmatch(method):
        shown = method[:32]
        if method and _METHOD.fullmatch(method.upper()):
            raise InvalidMethodError(
                f"method {shown!r} is not upper case: methods are case-sensitive; "
                f"send {method.upper()!r}")
        raise InvalidMethodError(f"method {shown!r} is not an RFC 9110 token")
    return method


def _check_characters(text: str, what: str) -> None:
    bad = _FORBIDDEN.search(text)
    if bad is not None:
        char = bad.group()
        if char == "#":
            raise InvalidPathError(f"{what} contains '#': a fragment is not part of a request")
        raise InvalidPathError(
            f"{what} contains the character {char!r} (control, space or non-ASCII): "
            "percent-encode it")


def _canonical_escapes(path: str) -> str:
    """One pass: escapes of unreserved characters decoded, others kept with upper-case
    hex, characters RFC 3986 does not allow in a path that Envoy encodes (`"<>^`{|}`)
    encoded; refused: malformed escapes, escaped control characters and slashes."""
    if _NEEDS_PASS.search(path) is None:
        return path
    out: list[str] = []
    i = 0
    n = len(path)
    while i < n:
        c = path[i]
        if c != "%":
            out.append(_ENCODED.get(c, c))
            i += 1
            continue
        pair = path[i + 1:i + 3]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            raise InvalidPathError(f"path has an invalid percent-escape {path[i:i + 3]!r}")
        value = int(pair, 16)
        if value < 0x20 or value == 0x7F:
            raise InvalidPathError(
                f"path has an escaped control character %{pair.upper()} (NUL included)")
        if value in _ESCAPED_SLASHES:
            raise InvalidPathError(
                f"path has an escaped slash or backslash %{pair.upper()}: send it unescaped")
        char = chr(value)
        out.append(char if char in UNRESERVED else "%" + pair.upper())
        i += 3
    return "".join(out)


def _merge_slashes(path: str) -> str:
    return _SLASHES.sub("/", path) if "//" in path else path


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path (starts with '/'): '.' segments go away,
    '..' removes the segment before it and never climbs above the root."""
    segments = path.split("/")[1:]
    out: list[str] = []
    for seg in segments:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    # A final '.' or '..' leaves a trailing slash (the segment named a directory).
    if segments and segments[-1] in (".", ".."):
        out.append("")
    return "/" + "/".join(out)


def normalize_path(path: str, merge_slashes: bool = True) -> str:
    """The normalized form of an origin-form path (no query): see the module doc.
    Raises InvalidPathError for what cannot be normalized safely."""
    if not path.startswith("/"):
        raise InvalidPathError(
            f"request path {path[:64]!r} does not start with '/' (absolute-form, "
            "authority-form or empty paths are not accepted)")
    _check_characters(path, "path")
    path = _canonical_escapes(path).replace("\\", "/")
    if merge_slashes:
        path = _merge_slashes(path)
    if "/." in path:  # a '.' or '..' segment starts right after a '/'
        path = remove_dot_segments(path)
        if merge_slashes:
            path = _merge_slashes(path)
    return path


def normalize_target(target: str, method: str, merge_slashes: bool = True) -> str:
    """The request target with its path normalized and its query kept as is.
    `*` is accepted for OPTIONS only (RFC 9112 §3.2.4)."""
    if target == "*":
        if method == "OPTIONS":
            return target
        raise InvalidPathError(f"request target '*' is only valid with OPTIONS, not {method}")
    path, sep, query = target.partition("?")
    normalized = normalize_path(path, merge_slashes)
    if not sep:
        return normalized
    _check_characters(query, "query")
    return normalized + "?" + query


def normalize_request(method: str, target: str, merge_slashes: bool = True
                      ) -> tuple[str, str]:
    """(method, target) as the waypoint matches and forwards them; raises
    RequestNormalizationError when the request must be refused with 400."""
    return check_method(method), normalize_target(target, method, merge_slashes)

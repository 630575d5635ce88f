"""Parsing what users type: `NS/POD`, and explain's `DST[:PORT][/PATH]`. Pure
functions, so every malformed input gets the same clear message everywhere."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ambientctl.errors import BadArgument


def parse_pod_ref(text: str, default_namespace: str = "default") -> tuple[str, str]:
    """`ns/pod` or `pod` (in the default namespace)."""
    ns, sep, name = text.partition("/")
    if not sep:
        ns, name = default_namespace, text
    if not ns or not name or "/" in name:
        raise BadArgument(f"{text!r} is not a pod reference",
                          "write NAMESPACE/POD, for example demo/frontend-0")
    return ns, name


@dataclass(frozen=True)
class Destination:
    """`host[:port][/path]`: host is a service (name, name.ns, ns/name, FQDN), a
    pod (ns/pod) or an IP address."""

    host: str
    port: int | None
    path: str

    @property
    def ip(self) -> str | None:
        try:
            return str(ipaddress.ip_address(self.host.strip("[]")))
        except ValueError:
            return None


_USAGE = "write SERVICE[:PORT][/PATH], e.g. catalog.demo:80/items or demo/catalog:80/items"


def _split_host(rest: str, text: str) -> tuple[str, str]:
    """(host, remainder starting with ':' or '/' or empty)."""
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise BadArgument(f"{text!r}: unterminated IPv6 address", "write [fd00::1]:80/path")
        return rest[: end + 1], rest[end + 1:]
    cut = min((i for i in (rest.find(":"), rest.find("/")) if i >= 0), default=len(rest))
    host, tail = rest[:cut], rest[cut:]
    if tail.startswith("/") and host and "." not in host:
        # `ns/name`: a namespace-qualified service or pod (a bare name followed by a
        # path must give its port: catalog:80/items).
        second = tail[1:]
        cut2 = min((i for i in (second.find(":"), second.find("/")) if i >= 0),
                   default=len(second))
        if second[:cut2]:
            return f"{host}/{second[:cut2]}", second[cut2:]
    return host, tail


def parse_destination(text: str) -> Destination:
    rest = text.split("://", 1)[1] if "://" in text else text
    host, tail = _split_host(rest.strip(), text)
    if not host:
        raise BadArgument(f"{text!r}: no host", _USAGE)
    port: int | None = None
    if tail.startswith(":"):
        port_text, slash, after = tail[1:].partition("/")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise BadArgument(f"{text!r}: port {port_text!r} is not a number 1-65535", _USAGE)
        port = int(port_text)
        tail = slash + after
    if tail and not tail.startswith("/"):
        raise BadArgument(f"{text!r}: unexpected {tail!r}", _USAGE)
    return Destination(host.strip("[]"), port, tail or "/")

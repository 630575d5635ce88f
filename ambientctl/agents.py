"""Talking to endpoints that live inside network namespaces: node agents serve on
their node's host IP:15020 inside the node netns, waypoints on their pod IP:15020.

The socket is created inside the target namespace (setns for this thread only, then
back), so the rest of the request runs from the root namespace as usual."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any

from mesh.runtime.netns import NetnsError, socket_in


class NetnsHTTPError(Exception):
    """The endpoint could not be reached or answered badly; str() says which."""


@dataclass(frozen=True)
class Endpoint:
    netns: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port} (netns {self.netns})"


def http_get(ep: Endpoint, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
    family = socket.AF_INET6 if ":" in ep.host else socket.AF_INET
    try:
        sock = socket_in(ep.netns, family, socket.SOCK_STREAM)
    except NetnsError as e:
        raise NetnsHTTPError(str(e)) from None
    sock.settimeout(timeout)
    try:
        sock.connect((ep.host, ep.port))
    except OSError as e:
        sock.close()
        raise NetnsHTTPError(e.strerror or str(e)) from None
    conn = http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)
    conn.sock = sock
    try:
        conn.request("GET", path, headers={"Host": f"{ep.host}:{ep.port}"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise NetnsHTTPError(str(e) or type(e).__name__) from None
    finally:
        conn.close()


def get_json(ep: Endpoint, path: str, timeout: float = 3.0) -> dict[str, Any]:
    status, body = http_get(ep, path, timeout)
    if status != 200:
        raise NetnsHTTPError(f"HTTP {status} on {path}")
    try:
        data = json.loads(body)
    except ValueError:
        raise NetnsHTTPError(f"{path} did not return JSON") from None
    if not isinstance(data, dict):
        raise NetnsHTTPError(f"{path} returned {type(data).__name__}, not an object")
    return data


def get_text(ep: Endpoint, path: str, timeout: float = 3.0) -> str:
    status, body = http_get(ep, path, timeout)
    if status != 200:
        raise NetnsHTTPError(f"HTTP {status} on {path}")
    return body.decode(errors="replace")

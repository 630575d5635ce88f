"""Local-mode node authentication: a node's bootstrap token is HMAC-SHA256(secret, node).

The controller alone holds the secret (a 0600 file in its state dir); it hands each
local node agent its token when starting it, and verifies tokens statelessly. A token
proves the node name it was derived for and nothing else, so a node agent can never
act as another node. Sent as gRPC metadata `authorization: Bearer <token>` and
`x-ambient-node: <node>`."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from mesh.identity.errors import NodeAuthError

SECRET_BYTES = 32
NODE_HEADER = "x-ambient-node"
AUTH_HEADER = "authorization"
BEARER = "Bearer "


def derive_node_token(secret: bytes, node: str) -> str:
    if not secret:
        raise NodeAuthError("the node-token secret is empty")
    if not node:
        raise NodeAuthError("a node token needs a node name")
    return hmac.new(secret, node.encode(), hashlib.sha256).hexdigest()


def verify_node_token(secret: bytes, node: str, token: str) -> bool:
    """Constant-time comparison, so timing reveals nothing about the expected token."""
    if not secret or not node or not token:
        return False
    expected = derive_node_token(secret, node)
    return hmac.compare_digest(expected.encode(), token.encode())


def load_or_create_secret(path: Path) -> bytes:
    """Read the controller's node-token secret, creating it (0600) on first start."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    secret = secrets.token_bytes(SECRET_BYTES)
    try:
        os.write(fd, secret)
    finally:
        os.close(fd)
    return secret


def auth_metadata(node: str, token: str) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata a node agent sends with every call to the controller."""
    return ((AUTH_HEADER, BEARER + token), (NODE_HEADER, node))


def authenticate(secret: bytes, metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The node name the metadata proves, or NodeAuthError saying what is wrong."""
    node = token = None
    for key, value in metadata:
        if isinstance(value, bytes):
            continue
        if key == NODE_HEADER:
            node = value
        elif key == AUTH_HEADER and value.startswith(BEARER):
            token = value[len(BEARER):].strip()
    if not node:
        raise NodeAuthError(f"missing '{NODE_HEADER}' metadata: the node agent must name its "
                            "node")
    if not token:
        raise NodeAuthError(f"missing '{AUTH_HEADER}: Bearer <token>' metadata for node "
                            f"{node}; start the node agent with its bootstrap token")
    if not verify_node_token(secret, node, token):
        raise NodeAuthError(f"the bootstrap token is not valid for node {node}; derive it "
                            "with the controller's current secret")
    return node


def _read_secret(path: Path) -> bytes:
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)
    data = path.read_bytes()
    if len(data) < 16:
        raise NodeAuthError(f"node-token secret {path} is shorter than 16 bytes; delete it "
                            "to generate a new one (node agents then need new tokens)")
    return data

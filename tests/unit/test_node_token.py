import os
import stat
from pathlib import Path

import pytest

from mesh.identity.errors import NodeAuthError
from mesh.identity.node_token import (
    auth_metadata,
    authenticate,
    derive_node_token,
    load_or_create_secret,
    verify_node_token,
)

SECRET = b"s" * 32


def test_token_is_hmac_sha256_hex() -> None:
    import hashlib
    import hmac
    token = derive_node_token(SECRET, "node-a")
    assert token == hmac.new(SECRET, b"node-a", hashlib.sha256).hexdigest()
    assert len(token) == 64


def test_verify_accepts_own_token_only() -> None:
    token = derive_node_token(SECRET, "node-a")
    assert verify_node_token(SECRET, "node-a", token)
    assert not verify_node_token(SECRET, "node-b", token)
    assert not verify_node_token(b"t" * 32, "node-a", token)
    assert not verify_node_token(SECRET, "node-a", token[:-1] + "0" if token[-1] != "0"
                                 else token[:-1] + "1")
    assert not verify_node_token(SECRET, "node-a", "")


def test_secret_file_created_0600_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "node-token.secret"
    first = load_or_create_secret(path)
    assert len(first) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_secret(path) == first


def test_loose_secret_mode_tightened(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"x" * 32)
    path.chmod(0o644)
    load_or_create_secret(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_authenticate_metadata() -> None:
    md = auth_metadata("node-a", derive_node_token(SECRET, "node-a"))
    assert authenticate(SECRET, md) == "node-a"
    with pytest.raises(NodeAuthError, match="not valid for node node-b"):
        authenticate(SECRET, [("x-ambient-node", "node-b"), md[0]])
    with pytest.raises(NodeAuthError, match="missing 'x-ambient-node'"):
        authenticate(SECRET, [md[0]])
    with pytest.raises(NodeAuthError, match="Bearer"):
        authenticate(SECRET, [md[1]])

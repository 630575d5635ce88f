"""The controller's state directory: secrets (node-token secret, admin token) and the
runtime facts that must survive a restart (nodes, pod placements, service VIPs, last
reported pod status), each as a small JSON file written atomically."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from controller.view import NodeRecord, PodState, Ref
from mesh.identity.node_token import load_or_create_secret


class StateError(Exception):
    """The state directory is unusable: fix its permissions or point --state-dir elsewhere."""


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _ref(text: str) -> Ref:
    ns, _, name = text.partition("/")
    return (ns, name)


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StateError(f"cannot create state dir {path}: {e}") from e

    @property
    def node_token_secret_file(self) -> Path:
        return self.path / "node-token.secret"

    @property
    def admin_token_file(self) -> Path:
        return self.path / "admin.token"

    def node_token_secret(self) -> bytes:
        return load_or_create_secret(self.node_token_secret_file)

    def admin_token(self) -> str:
        path = self.admin_token_file
        if path.exists():
            return path.read_text().strip()
        token = secrets.token_hex(32)
        write_atomic(path, token.encode() + b"\n", mode=0o600)
        return token

    def _load(self, name: str) -> Any:
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise StateError(f"state file {path} is unreadable ({e}); remove it to reset") from e

    def _save(self, name: str, data: Any) -> None:
        write_atomic(self.path / name, json.dumps(data, indent=1, sort_keys=True).encode())

    def load_nodes(self) -> dict[str, NodeRecord]:
        raw = self._load("nodes.json") or {}
        return {n: NodeRecord(n, tuple(c)) for n, c in raw.items()}

    def save_nodes(self, nodes: dict[str, NodeRecord]) -> None:
        self._save("nodes.json", {n: list(r.pod_cidrs) for n, r in nodes.items()})

    def load_placements(self) -> dict[Ref, str]:
        return {_ref(k): v for k, v in (self._load("placements.json") or {}).items()}

    def save_placements(self, placements: dict[Ref, str]) -> None:
        self._save("placements.json", {f"{k[0]}/{k[1]}": v for k, v in placements.items()})

    def load_vips(self) -> dict[Ref, str]:
        return {_ref(k): v for k, v in (self._load("vips.json") or {}).items()}

    def save_vips(self, vips: dict[Ref, str]) -> None:
        self._save("vips.json", {f"{k[0]}/{k[1]}": v for k, v in vips.items()})

    def load_pod_states(self) -> dict[Ref, PodState]:
        raw = self._load("pod-status.json") or {}
        return {_ref(k): PodState(**v) for k, v in raw.items()}

    def save_pod_states(self, states: dict[Ref, PodState]) -> None:
        self._save("pod-status.json", {
            f"{k[0]}/{k[1]}": {"uid": s.uid, "node": s.node, "ipv4": s.ipv4, "ipv6": s.ipv6,
                               "phase": s.phase, "message": s.message}
            for k, s in states.items()
        })

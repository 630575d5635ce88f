"""Where a local mesh keeps its state: one directory per cluster, so `down` can remove
every file by removing one tree, and every command finds the running mesh from the
cluster name alone.

    /run/ambientmesh/<cluster>/
      mesh.json            ports, nodes, trust domain: what `up` started
      controller/          controller state (CA, admin.token, node-token.secret)
      config/              controller config dir (applied YAML)
      nodes/<node>/        node agent state and its bootstrap token
      logs/<component>.log one per process: controller, node-1, ...
      pids/<component>.json  pid + kernel start time of each process
      runtime/             LocalRuntime records (nodes, pods)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mesh.ports import CONTROLLER_ADMIN_PORT, CONTROLLER_GRPC_PORT, METRICS_PORT

DEFAULT_ROOT = Path("/run/ambientmesh")
DEFAULT_CLUSTER = "amesh"
DEFAULT_GRPC_PORT = CONTROLLER_GRPC_PORT
DEFAULT_ADMIN_PORT = CONTROLLER_ADMIN_PORT
DEFAULT_TRUST_DOMAIN = "cluster.local"
AGENT_PORT = METRICS_PORT
"""The node agent's and the waypoint's metrics / status port, where ambientctl scrapes."""


@dataclass(frozen=True)
class MeshSettings:
    """What `up` chose, persisted so later commands talk to the same processes."""

    cluster: str
    nodes: list[str]
    grpc_port: int = DEFAULT_GRPC_PORT
    admin_port: int = DEFAULT_ADMIN_PORT
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    manifests: str = "demo"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def admin_addr(self) -> str:
        return f"127.0.0.1:{self.admin_port}"


@dataclass(frozen=True)
class MeshLayout:
    cluster: str = DEFAULT_CLUSTER
    root: Path = DEFAULT_ROOT

    @property
    def base(self) -> Path:
        return self.root / self.cluster

    @property
    def settings_file(self) -> Path:
        return self.base / "mesh.json"

    @property
    def controller_state(self) -> Path:
        return self.base / "controller"

    @property
    def config_dir(self) -> Path:
        return self.base / "config"

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    @property
    def pids(self) -> Path:
        return self.base / "pids"

    @property
    def runtime_state(self) -> Path:
        return self.base / "runtime"

    @property
    def admin_token_file(self) -> Path:
        return self.controller_state / "admin.token"

    @property
    def node_secret_file(self) -> Path:
        return self.controller_state / "node-token.secret"

    def node_state(self, node: str) -> Path:
        return self.base / "nodes" / node

    def node_token_file(self, node: str) -> Path:
        return self.node_state(node) / "token"

    def log_file(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def pid_file(self, component: str) -> Path:
        return self.pids / f"{component}.json"

    def create(self) -> None:
        for path in (self.base, self.controller_state, self.config_dir, self.logs, self.pids):
            path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.controller_state, 0o700)

    def components(self) -> list[str]:
        """Every component that has a log file: what `logs` can show."""
        if not self.logs.is_dir():
            return []
        return sorted(p.stem for p in self.logs.glob("*.log"))

    def save_settings(self, settings: MeshSettings) -> None:
        tmp = self.settings_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(settings), indent=1))
        tmp.rename(self.settings_file)

    def load_settings(self) -> MeshSettings | None:
        try:
            data = json.loads(self.settings_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return MeshSettings(**data)

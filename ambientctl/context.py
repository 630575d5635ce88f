"""What every command needs to find the local mesh: its layout, the settings `up`
saved, and clients for the controller, node agents and the runtime. Built once per
invocation from the global `--cluster` option; nothing here is global state."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ambientctl.admin import AdminClient
from ambientctl.agents import Endpoint
from ambientctl.errors import MeshNotRunning, NotRoot
from ambientctl.layout import AGENT_PORT, DEFAULT_ADMIN_PORT, MeshLayout, MeshSettings
from ambientctl.processes import ProcessTable
from mesh.runtime import LocalRuntime, Node


@dataclass
class MeshContext:
    layout: MeshLayout
    admin_override: str | None = None
    token_override: Path | None = None
    _runtime: LocalRuntime | None = field(default=None, repr=False)

    @property
    def cluster(self) -> str:
        return self.layout.cluster

    @property
    def settings(self) -> MeshSettings | None:
        return self.layout.load_settings()

    def require_settings(self) -> MeshSettings:
        settings = self.settings
        if settings is None:
            raise MeshNotRunning(self.cluster)
        return settings

    @property
    def processes(self) -> ProcessTable:
        return ProcessTable(self.layout)

    def admin_address(self) -> str:
        if self.admin_override:
            return self.admin_override
        settings = self.settings
        return settings.admin_addr if settings else f"127.0.0.1:{DEFAULT_ADMIN_PORT}"

    def admin(self, timeout: float = 10.0) -> AdminClient:
        token = self.token_override or self.layout.admin_token_file
        return AdminClient(self.admin_address(), token, str(self.layout.log_file("controller")),
                           timeout=timeout)

    def runtime(self, command: str) -> LocalRuntime:
        if os.geteuid() != 0:
            raise NotRoot(command)
        if self._runtime is None:
            self._runtime = LocalRuntime(self.cluster, state_dir=self.layout.runtime_state)
        return self._runtime

    @staticmethod
    def agent_endpoint(node: Node) -> Endpoint:
        return Endpoint(node.netns, str(node.host_ip), AGENT_PORT)

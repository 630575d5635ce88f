"""One JSON line per proxied connection: who, to whom, how much, how it ended.
Written by the shared writer (mesh.telemetry.accesslog)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from mesh.telemetry.accesslog import AccessLog as _Writer
from mesh.telemetry.accesslog import json_renderer


@dataclass(slots=True)
class ConnectionRecord:
    direction: str  # outbound | inbound | inbound_plaintext
    source_address: str
    destination_address: str
    source_identity: str = ""
    destination_identity: str = ""
    source_workload: str = ""
    destination_workload: str = ""
    destination_service: str = ""
    transport: str = ""  # hbone | plaintext | passthrough
    request_bytes: int = 0
    response_bytes: int = 0
    outcome: str = "ok"  # ok | denied | refused | error
    reason: str = ""
    policy: str = ""
    started: float = field(default_factory=time.time)
    proxy_pid: int = field(default_factory=os.getpid)  # the agent or one of its workers
    duration_ms: float = 0.0

    def to_json(self) -> str:
        return _render(self)


_render = json_renderer(ConnectionRecord, prefix={"log": "access"})


class AccessLog(_Writer):
    """The node proxy's log (stdout by default): a record's duration is taken when it
    is written, as the connection ends."""

    def write(self, record: ConnectionRecord) -> None:  # type: ignore[override]
        record.duration_ms = round((time.time() - record.started) * 1000, 3)
        super().write(record)

"""One JSON line per proxied connection: who, to whom, how much, how it ended."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TextIO


@dataclass
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


class AccessLog:
    """Writes records to a stream (stdout by default); one instance per proxy."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def write(self, record: ConnectionRecord) -> None:
        record.duration_ms = round((time.time() - record.started) * 1000, 3)
        line = {"log": "access", **asdict(record)}
        self.out.write(json.dumps(line, separators=(",", ":")) + "\n")
        self.out.flush()

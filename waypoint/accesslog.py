"""JSON access log: one line per request, written when the response is complete.
Field names follow Envoy's access-log vocabulary so existing log pipelines parse it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TextIO


@dataclass
class AccessRecord:
    start_time: str
    method: str
    path: str
    protocol: str
    response_code: int
    response_flags: str
    duration_ms: float
    bytes_received: int
    bytes_sent: int
    authority: str
    request_id: str
    trace_id: str
    source_principal: str
    destination_service: str
    upstream_host: str
    route_name: str
    attempts: int
    user_agent: str
    reason: str = ""


class AccessLog:
    """Writes records to a text stream (stdout by default); `None` disables it."""

    def __init__(self, sink: TextIO | None) -> None:
        self._sink = sink

    def write(self, record: AccessRecord) -> None:
        if self._sink is None:
            return
        self._sink.write(json.dumps(asdict(record), separators=(",", ":")) + "\n")
        self._sink.flush()

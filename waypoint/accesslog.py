"""JSON access log of the waypoint: one line per request, written when the response
is complete, by the shared writer (mesh.telemetry.accesslog). Field names follow
Envoy's access-log vocabulary so existing log pipelines parse it."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.telemetry.accesslog import AccessLog, WallClock, json_renderer

__all__ = ["AccessLog", "AccessRecord", "WallClock"]


@dataclass(slots=True)
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

    def to_json(self) -> str:
        return _render(self)


_render = json_renderer(AccessRecord)

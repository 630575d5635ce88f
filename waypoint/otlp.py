"""Optional span export over OTLP/HTTP with the JSON encoding (the OpenTelemetry
protocol spec's `application/json` form), batched and sent by one task. Export
never slows requests: when the collector is slow or down, spans beyond the queue are
dropped and counted."""

from __future__ import annotations

from collections import deque
from typing import Any

import anyio
import httpx
import structlog

from waypoint.tracing import Span

log = structlog.get_logger("waypoint.otlp")
SPAN_KIND_SERVER = 2
STATUS_ERROR = 2


def span_json(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {
        "traceId": span.context.trace_id,
        "spanId": span.context.span_id,
        "name": span.name,
        "kind": SPAN_KIND_SERVER,
        "startTimeUnixNano": str(span.start_ns),
        "endTimeUnixNano": str(span.end_ns),
        "attributes": [
            {"key": k, "value": {"intValue": str(v)} if isinstance(v, int)
             else {"stringValue": v}}
            for k, v in span.attributes.items()
        ],
    }
    if span.parent_span_id:
        out["parentSpanId"] = span.parent_span_id
    if span.error:
        out["status"] = {"code": STATUS_ERROR}
    return out


def export_request(spans: list[Span], service_name: str) -> dict[str, Any]:
    return {"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": service_name}}]},
        "scopeSpans": [{"scope": {"name": "ambient-waypoint"},
                        "spans": [span_json(s) for s in spans]}],
    }]}


class OtlpExporter:
    def __init__(self, endpoint: str, service_name: str, max_queue: int = 4096,
                 batch: int = 512, interval_s: float = 1.0) -> None:
        self.url = endpoint.rstrip("/") + "/v1/traces"
        self.service_name = service_name
        self._queue: deque[Span] = deque()
        self._max = max_queue
        self._batch = batch
        self._interval = interval_s
        self._wake = anyio.Event()
        self.dropped = 0
        self.exported = 0

    def submit(self, span: Span) -> None:
        if not span.context.sampled:
            return
        if len(self._queue) >= self._max:
            self.dropped += 1
            return
        self._queue.append(span)
        if len(self._queue) >= self._batch:
            self._wake.set()

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                with anyio.move_on_after(self._interval):
                    await self._wake.wait()
                self._wake = anyio.Event()
                await self._flush(client)

    async def _flush(self, client: httpx.AsyncClient) -> None:
        while self._queue:
            spans = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            try:
                r = await client.post(self.url, json=export_request(spans, self.service_name))
                r.raise_for_status()
                self.exported += len(spans)
            except httpx.HTTPError as e:
                self.dropped += len(spans)
                log.warning("span export failed", url=self.url, error=str(e), spans=len(spans))
                return

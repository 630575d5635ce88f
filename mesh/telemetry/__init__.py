"""Telemetry both proxies share, so the node proxy and the waypoint cannot drift:

- `accesslog`: the one access-log writer (JSON lines rendered straight from a record's
  fields, written once per event-loop turn) and its wall clock;
- `labels`: the one builder of Istio's standard metric labels (who called whom, over
  what, how it ended) from plain inputs, and who a source is (`source_party`).

Owns no metric registry and no stream: each proxy keeps its own and passes them in."""

from mesh.telemetry.accesslog import AccessLog, WallClock, json_renderer
from mesh.telemetry.labels import Party, ServiceRef, party, source_party

__all__ = ["AccessLog", "Party", "ServiceRef", "WallClock", "json_renderer", "party",
           "source_party"]

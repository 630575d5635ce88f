"""Denied connections and requests with the policy that denied them, from the JSON
access logs: the node proxies' (one line per connection; `outcome: denied` carries
`policy` and `reason`) and the waypoints' (one line per request; a policy denial is
`response_flags: RBAC` with the policy named in `reason`, as Envoy's RBAC filter
does). Metrics carry no policy name (a label per policy would multiply the series),
the access log does, as ztunnel's does.

Only the tail of each log is read (the last `TAIL_BYTES`), and only records of the
last `WINDOW` seconds count: the dashboard shows what is being denied now."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ambientctl.dashboard.graph import Denial, short_service

TAIL_BYTES = 2 * 1024 * 1024
WINDOW = 600.0


def tail_lines(path: Path, limit: int = TAIL_BYTES) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return []
    lines = data.decode(errors="replace").splitlines()
    return lines[1:] if size > limit else lines  # the first may be cut


POLICY_IN_REASON = re.compile(r"polic(?:y|ies) ([\w.-]+/[\w.-]+)")


def denied_records(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Denied records of either proxy, in the node proxy's shape (a waypoint record
    gains `policy` from its reason, `started` from its start_time and
    `destination_service` stays the service it was denied on)."""
    out = []
    for line in lines:
        if '"denied"' not in line and '"RBAC"' not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        if rec.get("log") == "access" and rec.get("outcome") == "denied":
            out.append(rec)
        elif rec.get("response_flags") == "RBAC" and "start_time" in rec:
            reason = str(rec.get("reason", ""))
            found = POLICY_IN_REASON.search(reason)
            try:
                started = dt.datetime.fromisoformat(str(rec["start_time"])).timestamp()
            except ValueError:
                started = 0.0
            out.append({"source_principal": rec.get("source_principal", ""),
                        "destination_service": rec.get("destination_service", ""),
                        "policy": found.group(1) if found else "", "reason": reason,
                        "started": started})
    return out


def summarize(records: Iterable[dict[str, Any]], who: Callable[[str], str],
              now: float | None = None, window: float = WINDOW) -> list[Denial]:
    """Group denied records by (source, destination, policy). `who(key)` names the
    workload behind a source address ("10.0.0.4") or SPIFFE principal
    ("spiffe://td/ns/demo/sa/frontend"), "" when unknown. A request denied at a
    waypoint has the service it addressed as destination (svc:NS/NAME)."""
    now = time.time() if now is None else now
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for rec in records:
        started = float(rec.get("started") or 0.0)
        if now - started > window:
            continue
        address = str(rec.get("source_address") or rec.get("source_principal") or "?")
        src = rec.get("source_workload") or who(address) or f"unknown/{address}"
        service = str(rec.get("destination_service") or "")
        dst = str(rec.get("destination_workload") or (
            short_service(service) if service not in ("", "unknown") else "") or
            rec.get("destination_address", "?"))
        policy = str(rec.get("policy") or "")
        groups.setdefault((src, dst, policy), []).append(rec)
    return [Denial(src, dst, policy, str(recs[-1].get("reason", "")), len(recs),
                   max(float(r.get("started") or 0.0) for r in recs))
            for (src, dst, policy), recs in sorted(groups.items())]


def from_logs(paths: Iterable[Path], who: Callable[[str], str],
              now: float | None = None) -> list[Denial]:
    records: list[dict[str, Any]] = []
    for p in paths:
        records += denied_records(tail_lines(p))
    return summarize(records, who, now)

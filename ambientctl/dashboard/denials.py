"""Denied connections with the policy that denied them, from the node proxies' JSON
access logs (one line per connection; `outcome: denied` carries `policy` and
`reason`). Metrics carry no policy name (a label per policy would multiply the
series), the access log does, as ztunnel's does.

Only the tail of each log is read (the last `TAIL_BYTES`), and only records of the
last `WINDOW` seconds count: the dashboard shows what is being denied now."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ambientctl.dashboard.graph import Denial

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


def denied_records(lines: Iterable[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        if '"denied"' not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("log") == "access" and \
                rec.get("outcome") == "denied":
            out.append(rec)
    return out


def summarize(records: Iterable[dict[str, Any]], who: Callable[[str], str],
              now: float | None = None, window: float = WINDOW) -> list[Denial]:
    """Group denied records by (source, destination, policy). `who(ip)` names the
    workload behind a source address ("legacy/client"), "" when unknown."""
    now = time.time() if now is None else now
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for rec in records:
        started = float(rec.get("started") or 0.0)
        if now - started > window:
            continue
        src = rec.get("source_workload") or who(str(rec.get("source_address", ""))) or \
            f"unknown/{rec.get('source_address', '?')}"
        dst = str(rec.get("destination_workload") or rec.get("destination_address", "?"))
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

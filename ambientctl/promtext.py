"""Merging Prometheus text from many processes into one exposition, and summarising
the mesh's standard (Istio-named) metrics into a who-talks-to-whom table.

Pure functions over text, so both are unit tested with captured samples."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v)) if v != int(v) else f"{int(v)}.0" if abs(v) < 1e15 else repr(v)


@dataclass
class _Family:
    name: str
    type: str
    help: str
    samples: list[Sample]


def parse(text: str) -> list[_Family]:
    """Families of one exposition; unparseable text raises ValueError."""
    return [_Family(f.name, f.type, f.documentation, list(f.samples))
            for f in text_string_to_metric_families(text)]


def merge(sources: Sequence[tuple[str, str]], label: str = "instance") -> str:
    """One exposition from (instance, text) pairs; every sample gains `instance`."""
    families: dict[str, _Family] = {}
    for instance, text in sources:
        for fam in parse(text):
            merged = families.setdefault(fam.name, _Family(fam.name, fam.type, fam.help, []))
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                merged.samples.append(Sample(s.name, {**s.labels, label: instance}, s.value))
    lines = []
    for fam in families.values():
        shown = fam.name + "_total" if fam.type == "counter" else fam.name
        lines.append(f"# HELP {shown} {fam.help}")
        lines.append(f"# TYPE {shown} {fam.type if fam.type != 'unknown' else 'untyped'}")
        for s in fam.samples:
            labels = ",".join(f'{k}="{_escape(str(v))}"' for k, v in s.labels.items())
            lines.append(f"{s.name}{{{labels}}} {_fmt_value(s.value)}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TrafficRow:
    source: str
    destination: str
    protocol: str
    security: str
    connections: float
    requests: float
    sent_bytes: float
    received_bytes: float
    reporter: str

    def as_dict(self) -> dict[str, object]:
        return self.__dict__.copy()


_TRACKED = {
    "istio_tcp_connections_opened_total": "connections",
    "istio_requests_total": "requests",
    "istio_tcp_sent_bytes_total": "sent_bytes",
    "istio_tcp_received_bytes_total": "received_bytes",
}


def _known(value: str | None) -> str:
    return "" if value in (None, "", "unknown") else str(value)


def _workload(labels: dict[str, str], side: str) -> str:
    name = _known(labels.get(f"{side}_workload"))
    ns = _known(labels.get(f"{side}_workload_namespace"))
    if not name:
        return _known(labels.get(f"{side}_service")) or "unknown"
    return f"{ns}/{name}" if ns else name


def traffic(texts: Iterable[str]) -> list[TrafficRow]:
    """Per (source workload, destination workload, protocol, security): totals of the
    Istio standard metrics, preferring the destination's view when both sides
    reported (it alone sees plaintext callers from outside the mesh)."""
    acc: dict[tuple[str, str, str, str, str], dict[str, float]] = defaultdict(
        lambda: dict.fromkeys(_TRACKED.values(), 0.0))
    for text in texts:
        for fam in parse(text):
            for s in fam.samples:
                field = _TRACKED.get(s.name)
                if field is None:
                    continue
                lab = s.labels
                key = (_workload(lab, "source"), _workload(lab, "destination"),
                       lab.get("request_protocol", "tcp"),
                       lab.get("connection_security_policy", "unknown"),
                       lab.get("reporter", ""))
                acc[key][field] += s.value
    rows = [TrafficRow(src, dst, proto, sec, v["connections"], v["requests"], v["sent_bytes"],
                       v["received_bytes"], rep)
            for (src, dst, proto, sec, rep), v in acc.items()]
    # One row per flow: the destination reporter's numbers when it reported.
    best: dict[tuple[str, str, str, str], TrafficRow] = {}
    for r in sorted(rows, key=lambda r: r.reporter != "destination"):
        best.setdefault((r.source, r.destination, r.protocol, r.security), r)
    return sorted(best.values(), key=lambda r: (r.source, r.destination, r.protocol))

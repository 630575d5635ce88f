"""The `status` verdict, linkerd-check style: facts gathered elsewhere in, a list of
named checks out, each failed one with a hint. Pure, so every way a mesh can be
unhealthy is unit tested without starting one.

Healthy means: the controller answers; the CA root is valid; every node agent runs,
is connected, has ACKed the latest config (no NACK) and has its BPF programs
attached; every pod runs and has its certificate (a captured pod waiting for one
has its connections refused); every waypoint is ready; no certificate is near
expiry."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

CERT_WARN = dt.timedelta(hours=2)
ROOT_WARN = dt.timedelta(days=30)


@dataclass(frozen=True)
class Check:
    category: str
    name: str
    ok: bool
    detail: str
    hint: str = ""


@dataclass
class AgentFacts:
    node: str
    process_alive: bool | None  # None: not started by `up` (nothing to say)
    status: dict[str, Any] | None
    error: str = ""


@dataclass
class MeshFacts:
    cluster: str
    controller_alive: bool | None
    controller_status: dict[str, Any] | None
    controller_error: str
    agents: list[AgentFacts]
    now: dt.datetime
    log_dir: str = ""


@dataclass
class HealthReport:
    cluster: str
    checks: list[Check]
    nodes: list[dict[str, Any]] = field(default_factory=list)
    namespaces: list[dict[str, Any]] = field(default_factory=list)
    waypoints: list[dict[str, Any]] = field(default_factory=list)
    certificates: list[dict[str, Any]] = field(default_factory=list)
    ca: dict[str, Any] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def as_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "healthy": self.healthy,
            "problems": [f"{c.name}: {c.detail}" for c in self.problems],
            "checks": [asdict(c) for c in self.checks],
            "ca": self.ca,
            "nodes": self.nodes,
            "namespaces": self.namespaces,
            "waypoints": self.waypoints,
            "certificates": self.certificates,
        }


def parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _get(d: dict[str, Any] | None, *keys: str, default: Any = None) -> Any:
    """First present key: the agent's status document spells some fields two ways."""
    if not d:
        return default
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return default


def _human(delta: dt.timedelta) -> str:
    secs = int(delta.total_seconds())
    if secs < 0:
        return f"expired {_human(-delta)} ago"
    if secs >= 2 * 86400:
        return f"{secs // 86400}d"
    if secs >= 3600:
        return f"{secs // 3600}h{(secs % 3600) // 60:02d}m"
    return f"{secs // 60}m{secs % 60:02d}s"


def controller_checks(f: MeshFacts) -> list[Check]:
    cat = "controller"
    out = []
    log = f"{f.log_dir}/controller.log" if f.log_dir else "`ambientctl logs controller`"
    if f.controller_alive is False:
        out.append(Check(cat, "controller process", False, "not running",
                         f"read {log}, then `sudo ambientctl down && sudo ambientctl up`"))
    if f.controller_status is None:
        out.append(Check(cat, "controller admin API", False, f.controller_error or "no answer",
                         "start the mesh with `sudo ambientctl up`"))
        return out
    c = f.controller_status.get("controller", {})
    out.append(Check(cat, "controller admin API", True,
                     f"answers; up {c.get('uptimeSeconds', '?')}s, trust domain "
                     f"{c.get('trustDomain', '?')}, {c.get('objects', 0)} objects"))
    errors = c.get("configErrors") or []
    out.append(Check(cat, "configuration", not errors,
                     "every file valid" if not errors else
                     "; ".join(str(e.get("message", e)) for e in errors),
                     "" if not errors else "fix the named files; the last good version of "
                     "each stays in force"))
    return out


def ca_checks(f: MeshFacts, report: HealthReport) -> list[Check]:
    cat = "certificates"
    certs = (f.controller_status or {}).get("certificates", {})
    if f.controller_status is None:
        return []
    if not certs.get("enabled"):
        return [Check(cat, "CA", False, "the controller runs no certificate authority",
                      "see the controller log: the CA failed to start")]
    roots = certs.get("roots") or []
    signing = next((r for r in roots if r.get("signing")), roots[0] if roots else None)
    if signing is None:
        return [Check(cat, "CA root", False, "no root certificate", "see the controller log")]
    not_after = parse_time(signing.get("notAfter"))
    report.ca = {"subject": signing.get("subject"), "notAfter": signing.get("notAfter"),
                 "fingerprintSha256": signing.get("fingerprintSha256"), "roots": len(roots)}
    if not_after is None:
        return [Check(cat, "CA root", False, f"unreadable expiry {signing.get('notAfter')!r}")]
    left = not_after - f.now
    ok = left > ROOT_WARN
    return [Check(cat, "CA root", ok,
                  f"{signing.get('subject')} expires {not_after:%Y-%m-%d} (in {_human(left)})",
                  "" if ok else "rotate the root: restart the controller with a new root "
                  "(docs/identity.md)")]


def agent_checks(f: MeshFacts, report: HealthReport) -> list[Check]:
    cat = "node agents"
    proxies = {p.get("name"): p for p in (f.controller_status or {}).get("proxies", [])
               if p.get("type", "node") == "node"}
    out = []
    for a in f.agents:
        name = a.node
        hint_log = f"see `ambientctl logs {name}`"
        node: dict[str, Any] = {"name": name, "processAlive": a.process_alive}
        report.nodes.append(node)
        if a.process_alive is False:
            node["healthy"] = False
            out.append(Check(cat, name, False, "node agent process is not running",
                             f"{hint_log}; restart the mesh with `sudo ambientctl down && "
                             "sudo ambientctl up`"))
            continue
        if a.status is None:
            node["healthy"] = False
            out.append(Check(cat, name, False, f"agent endpoint unreachable: {a.error}",
                             hint_log))
            continue
        s = a.status
        proxy = proxies.get(name, {})
        connected = bool(_get(s, "connected", default=proxy.get("connected", False)))
        version = str(_get(s, "config_version", "configVersion", "version", default=""))
        latest = str(proxy.get("latestVersion", ""))
        acked = str(proxy.get("ackedVersion", "") or "")
        nack = proxy.get("lastNack") or _get(s, "last_nack", "lastNack", "nack")
        bpf = _get(s, "bpf", default={}) or {}
        programs = bpf.get("programs") or []
        # The redirector reports `healthy` (every program loaded and its link attached).
        attached = bool(bpf.get("attached", bpf.get("healthy")))
        if isinstance(programs, list):
            programs = [p for p in programs if not isinstance(p, dict) or p.get("id")]
        enrolled = _get(s, "enrolled_pods", "enrolledPods", "enrolled", default=[]) or []
        n_enrolled = len(enrolled) if isinstance(enrolled, list) else int(enrolled)
        node.update({"connected": connected, "configVersion": version,
                     "latestVersion": latest, "ackedVersion": acked, "nack": nack,
                     "bpfAttached": attached,
                     "bpfPrograms": len(programs) if isinstance(programs, list) else programs,
                     "enrolledPods": n_enrolled})
        problems = []
        if not connected:
            problems.append(("not connected to the controller",
                             "the agent keeps its last config; check the controller is up"))
        if nack:
            problems.append((f"rejected config {proxy.get('sentVersion', '')}: {nack}",
                             "fix the object named in the reason; the agent keeps its "
                             "last good config"))
        elif connected and latest and acked != latest:
            problems.append((f"config {latest} not ACKed (has {acked or 'none'})",
                             "wait a moment; if it persists, " + hint_log))
        if not attached:
            problems.append(("BPF programs not attached", "run `sudo ambientctl check`; "
                             + hint_log))
        waiting = _get(s, "pods_waiting_for_certificate", default=[]) or []
        if waiting:
            node["podsWaitingForCertificate"] = waiting
            pods = "; ".join(f"{w.get('pod')} ({w.get('reason')})" for w in waiting)
            problems.append((f"{len(waiting)} pod(s) waiting for a certificate, their "
                             f"connections are refused: {pods}",
                             "the CA refused or could not be reached: check the controller "
                             "(`ambientctl logs controller`); the agent retries every 2 s"))
        node["healthy"] = not problems
        if problems:
            out.append(Check(cat, name, False, "; ".join(p for p, _ in problems),
                             problems[0][1]))
        else:
            out.append(Check(cat, name, True,
                             f"connected, config {acked or version} ACKed, "
                             f"{node['bpfPrograms']} BPF programs attached, "
                             f"{n_enrolled} pods enrolled"))
        for cert in _get(s, "certificates", default=[]) or []:
            report.certificates.append({"node": name, **cert})
    return out


def workload_checks(f: MeshFacts, report: HealthReport) -> list[Check]:
    status = f.controller_status
    if status is None:
        return []
    out = []
    enrolled_ns = {n["name"] for n in status.get("namespaces", []) if n.get("enrolled")}
    per_ns: dict[str, int] = defaultdict(int)
    for ref in status.get("enrolledPods", []):
        per_ns[ref.split("/", 1)[0]] += 1
    for ns in sorted({n["name"] for n in status.get("namespaces", [])}):
        report.namespaces.append({"name": ns, "enrolled": ns in enrolled_ns,
                                  "enrolledPods": per_ns.get(ns, 0)})
    pods = status.get("pods", {})
    total, running = int(pods.get("total", 0)), int(pods.get("running", 0))
    summary = ", ".join(f"{ns}: {n}" for ns, n in sorted(per_ns.items())) or "none"
    out.append(Check("workloads", "pods", running == total,
                     f"{running}/{total} running; enrolled per namespace: {summary}",
                     "" if running == total else
                     "`ambientctl get pods -A` shows which; the node agent log says why"))
    for wp in status.get("waypoints", []):
        report.waypoints.append(wp)
        ready = bool(wp.get("ready"))
        services = ", ".join(wp.get("services", [])) or "no services"
        out.append(Check("workloads", f"waypoint {wp.get('name')}", ready,
                         f"ready at {', '.join(wp.get('addresses', []))} for {services}"
                         if ready else f"not ready (serves {services})",
                         "" if ready else "its pod is not running yet: "
                         "`ambientctl get pods -A`"))
    return out


def cert_checks(f: MeshFacts, report: HealthReport) -> list[Check]:
    if not report.certificates:
        return []
    soon = []
    for cert in report.certificates:
        not_after = parse_time(_get(cert, "not_after", "notAfter"))
        if not_after is None:
            continue
        cert["expiresIn"] = _human(not_after - f.now)
        if not_after - f.now < CERT_WARN:
            soon.append(f"{cert.get('identity')} on {cert.get('node')} ({cert['expiresIn']})")
    ok = not soon
    return [Check("certificates", "workload certificates", ok,
                  f"{len(report.certificates)} valid for more than {_human(CERT_WARN)}" if ok
                  else "near expiry: " + "; ".join(soon),
                  "" if ok else "agents renew at half-life: check the controller is "
                  "reachable and the agent log")]


def evaluate(f: MeshFacts) -> HealthReport:
    report = HealthReport(f.cluster, [])
    report.checks += controller_checks(f)
    report.checks += ca_checks(f, report)
    report.checks += agent_checks(f, report)
    report.checks += workload_checks(f, report)
    report.checks += cert_checks(f, report)
    return report


def categories(checks: Sequence[Check]) -> list[tuple[str, list[Check]]]:
    order: dict[str, list[Check]] = {}
    for c in checks:
        order.setdefault(c.category, []).append(c)
    return list(order.items())

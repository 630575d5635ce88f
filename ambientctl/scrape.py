"""Finding and reading every proxy of the local mesh: node agents (status, metrics)
and waypoints (metrics). Failures are returned, not raised: `status` and `metrics`
report an unreachable agent as a finding, not a crash."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ambientctl.agents import Endpoint, NetnsHTTPError, get_json, get_text
from ambientctl.context import MeshContext
from ambientctl.layout import AGENT_PORT
from mesh.runtime import LocalRuntime, Node, PodNotFound


@dataclass
class AgentReport:
    node: str
    endpoint: Endpoint | None
    status: dict[str, Any] | None = None
    error: str = ""
    process_alive: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def agent_reports(mesh: MeshContext, runtime: LocalRuntime, node_names: list[str],
                  timeout: float = 2.0) -> list[AgentReport]:
    nodes = {n.name: n for n in runtime.list_nodes()}
    reports = []
    for name in node_names:
        node: Node | None = nodes.get(name)
        alive = mesh.processes.alive(name) if mesh.processes.get(name) else None
        if node is None:
            reports.append(AgentReport(name, None, error="node network namespace is missing",
                                       process_alive=alive))
            continue
        ep = mesh.agent_endpoint(node)
        try:
            reports.append(AgentReport(name, ep, get_json(ep, "/status", timeout),
                                       process_alive=alive))
        except NetnsHTTPError as e:
            reports.append(AgentReport(name, ep, None, str(e), process_alive=alive))
    return reports


def metric_sources(mesh: MeshContext, runtime: LocalRuntime, node_names: list[str],
                   waypoints: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """([(instance, text)], [problems]) for controller, node agents and waypoints."""
    sources: list[tuple[str, str]] = []
    problems: list[str] = []
    with mesh.admin(timeout=5) as admin:
        try:
            sources.append(("controller", admin.metrics()))
        except Exception as e:  # reported, never fatal: the others may still answer
            problems.append(f"controller: {getattr(e, 'message', e)}")
    nodes = {n.name: n for n in runtime.list_nodes()}
    for name in node_names:
        node = nodes.get(name)
        if node is None:
            problems.append(f"{name}: node is missing")
            continue
        try:
            sources.append((name, get_text(mesh.agent_endpoint(node), "/metrics")))
        except NetnsHTTPError as e:
            problems.append(f"{name}: {e}")
    for ref in waypoints:
        ns, _, wp = ref.partition("/")
        try:
            pod = runtime.get_pod(ns, wp)
        except PodNotFound:
            problems.append(f"waypoint {ref}: pod not running")
            continue
        try:
            sources.append((f"waypoint/{ref}",
                            get_text(Endpoint(pod.netns, str(pod.ip), AGENT_PORT), "/metrics")))
        except NetnsHTTPError as e:
            problems.append(f"waypoint {ref}: {e}")
    return sources, problems

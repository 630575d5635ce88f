"""`ambientctl status`: is the local mesh healthy? Exit 0 only when it is."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click

from ambientctl import health
from ambientctl.context import MeshContext
from ambientctl.errors import AmbientctlError
from ambientctl.options import output_option
from ambientctl.output import emit, make_console
from ambientctl.scrape import agent_reports


def gather(mesh: MeshContext) -> health.MeshFacts:
    settings = mesh.settings
    status, error = None, ""
    try:
        with mesh.admin(timeout=5) as admin:
            status = admin.status()
    except AmbientctlError as e:
        error = e.message
    nodes = settings.nodes if settings else []
    if not nodes and status:
        nodes = [n["metadata"]["name"] for n in status.get("nodes", [])]
    agents = []
    if nodes:
        runtime = mesh.runtime("status")
        for r in agent_reports(mesh, runtime, nodes):
            agents.append(health.AgentFacts(r.node, r.process_alive, r.status, r.error))
    controller_alive = mesh.processes.alive("controller") if mesh.processes.get(
        "controller") else None
    return health.MeshFacts(mesh.cluster, controller_alive, status, error, agents,
                            dt.datetime.now(dt.UTC), str(mesh.layout.logs))


def render(report: health.HealthReport) -> None:
    console = make_console()
    for category, checks in health.categories(report.checks):
        console.print(f"[bold]{category}[/bold]")
        for c in checks:
            mark = "[green]√[/green]" if c.ok else "[red]×[/red]"
            console.print(f"{mark} {c.name}: {c.detail}", markup=True)
            if not c.ok and c.hint:
                console.print(f"    [yellow]fix:[/yellow] {c.hint}")
        console.print()
    if report.healthy:
        console.print(f"Status: [green]healthy[/green] ({len(report.checks)} checks passed)")
    else:
        console.print(f"Status: [red]{len(report.problems)} problem(s)[/red]: "
                      + "; ".join(c.name for c in report.problems))


@click.command("status")
@output_option
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Report on a Kubernetes cluster instead of the local mesh.")
@click.pass_obj
def command(mesh: MeshContext, fmt: str, kubeconfig: Path | None) -> None:
    """Health of the local mesh, linkerd-check style: controller, CA root and expiry,
    each node agent (connected, config version ACKed or the NACK reason, BPF
    programs attached), enrolled pods per namespace, waypoints, certificates near
    expiry. Exits 0 only when everything is healthy; each problem says what to do.

    `-o json` is stable: {cluster, healthy, problems[], checks[{category, name,
    ok, detail, hint}], ca, nodes[], namespaces[], waypoints[], certificates[]}
    (see docs/cli.md).

    \b
    Examples:
      sudo ambientctl status
      sudo ambientctl status -o json | jq .problems
      ambientctl status --kubeconfig ~/.kube/config
    """
    if kubeconfig is not None:
        from ambientctl.commands.install import cluster_status

        sys.exit(0 if cluster_status(kubeconfig, fmt) else 1)
    report = health.evaluate(gather(mesh))
    if fmt == "table":
        render(report)
    else:
        emit(report.as_dict(), fmt)
    sys.exit(0 if report.healthy else 1)

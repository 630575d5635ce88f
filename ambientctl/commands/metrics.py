"""`ambientctl metrics`: Prometheus text of the controller and every proxy, merged."""

from __future__ import annotations

import click

from ambientctl import promtext, scrape
from ambientctl.context import MeshContext
from ambientctl.options import output_option
from ambientctl.output import emit


def collect(mesh: MeshContext) -> tuple[list[tuple[str, str]], list[str]]:
    settings = mesh.require_settings()
    runtime = mesh.runtime("metrics")
    with mesh.admin() as admin:
        waypoints = [w["name"] for w in admin.status().get("waypoints", [])]
    return scrape.metric_sources(mesh, runtime, settings.nodes, waypoints)


def summary_rows(rows: list[promtext.TrafficRow]) -> list[list[str]]:
    return [[r.source, r.destination, r.protocol, r.security, f"{r.connections:g}",
             f"{r.requests:g}", f"{r.sent_bytes:g}", f"{r.received_bytes:g}"] for r in rows]


SUMMARY_COLUMNS = ["SOURCE", "DESTINATION", "PROTOCOL", "SECURITY", "CONNECTIONS", "REQUESTS",
                   "SENT", "RECEIVED"]


@click.command("metrics")
@click.option("--summary", is_flag=True,
              help="Traffic table (source -> destination, mTLS or plaintext) instead of text.")
@output_option
@click.pass_obj
def command(mesh: MeshContext, summary: bool, fmt: str) -> None:
    """Print the metrics of the controller, every node proxy and every waypoint as
    one Prometheus exposition; each sample gains an `instance` label (controller,
    node-1, waypoint/demo/waypoint, ...). Metric names and labels are Istio's.

    \b
    Examples:
      sudo ambientctl metrics | grep istio_tcp_connections_opened_total
      sudo ambientctl metrics --summary
      sudo ambientctl metrics --summary -o json
    """
    sources, problems = collect(mesh)
    for p in problems:
        click.echo(f"warning: no metrics from {p}", err=True)
    if not summary:
        text = promtext.merge(sources)
        if fmt == "table":
            click.echo(text, nl=False)
        else:
            emit({"sources": [s for s, _ in sources], "text": text}, fmt)
        return
    rows = promtext.traffic(text for _, text in sources)
    if fmt != "table":
        emit({"traffic": [r.as_dict() for r in rows]}, fmt)
        return
    if not rows:
        click.echo("No mesh traffic recorded yet.")
        return
    emit(None, "table", SUMMARY_COLUMNS, summary_rows(rows), title="mesh traffic")

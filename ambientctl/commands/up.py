"""`ambientctl up`: start the embedded local mesh and wait until it is ready."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ambientctl.context import MeshContext
from ambientctl.errors import AmbientctlError
from ambientctl.layout import DEFAULT_ADMIN_PORT, DEFAULT_GRPC_PORT, DEFAULT_TRUST_DOMAIN
from ambientctl.localmesh import LocalMesh, UpOptions, UpResult
from ambientctl.observability import DEFAULT_GATEWAY_PORT, DEFAULT_PROMETHEUS_PORT
from ambientctl.observability import start as start_observability
from ambientctl.progress import StepPrinter

NEXT_STEPS_DEMO = """
Try next:
  ambientctl status                                  # is everything healthy?
  ambientctl get pods -A                             # where each pod runs, its IP
  python3 -m ambientctl.demo_traffic                 # traffic from inside and outside the mesh
  ambientctl explain demo/frontend-0 catalog.demo:80/items     # route, backends, policies
  ambientctl explain legacy/client demo/inventory-0:9000       # a denied connection
  ambientctl exec demo/frontend-0 -- {py} -m ambientctl.demo.client http://catalog.demo/items
  ambientctl metrics --summary                       # who talked to whom, mTLS or not
  ambientctl dashboard                               # live service graph in a browser
  ambientctl logs node-1                             # a node agent's log
  ambientctl down                                    # remove every trace
"""

NEXT_STEPS = """
Try next:
  ambientctl status                # is everything healthy?
  ambientctl get pods -A           # your pods, their nodes and IPs
  ambientctl metrics --summary     # who talked to whom, mTLS or not
  ambientctl dashboard             # live service graph in a browser
  ambientctl down                  # remove every trace
"""


@click.command("up")
@click.option("--nodes", type=click.IntRange(1, 250), default=2, show_default=True,
              help="Number of local nodes (node-1 ... node-N).")
@click.option("-f", "--filename", "manifests_dir",
              type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Apply this directory of YAML instead of the demo shop.")
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=DEFAULT_GRPC_PORT,
              show_default=True, help="Controller config push port (127.0.0.1).")
@click.option("--admin-port", type=click.IntRange(1, 65535), default=DEFAULT_ADMIN_PORT,
              show_default=True, help="Controller admin API port (127.0.0.1).")
@click.option("--trust-domain", default=DEFAULT_TRUST_DOMAIN, show_default=True)
@click.option("--timeout", type=float, default=180.0, show_default=True,
              help="Seconds to wait for each readiness step.")
@click.option("--observability", is_flag=True,
              help="Also start Prometheus scraping every proxy (docs/observability.md).")
@click.option("--prometheus-port", type=click.IntRange(1, 65535),
              default=DEFAULT_PROMETHEUS_PORT, show_default=True,
              help="Prometheus port on 127.0.0.1 (with --observability).")
@click.option("--metrics-gateway-port", type=click.IntRange(1, 65535),
              default=DEFAULT_GATEWAY_PORT, show_default=True,
              help="Scrape gateway port on 127.0.0.1 (with --observability).")
@click.pass_obj
def command(mesh: MeshContext, nodes: int, manifests_dir: Path | None, grpc_port: int,
            admin_port: int, trust_domain: str, timeout: float, observability: bool,
            prometheus_port: int, metrics_gateway_port: int) -> None:
    """Start the local mesh: a controller, one node agent per local node (each node a
    network namespace) and the workloads of DIR or the built-in demo shop. Returns
    when every agent is connected, every pod runs and every waypoint is ready.

    Running it again reports the running mesh; it only restarts node agents that
    stopped. After a crash it first removes the leftovers. Needs root.

    \b
    Examples:
      sudo ambientctl up
      sudo ambientctl up --nodes 3 -f examples/
      sudo ambientctl --cluster dev up --grpc-port 16012 --admin-port 16014
      sudo ambientctl up --observability   # + Prometheus on 127.0.0.1:15090
    """
    printer = StepPrinter()
    opts = UpOptions(nodes=nodes, manifests_dir=manifests_dir, grpc_port=grpc_port,
                     admin_port=admin_port, trust_domain=trust_domain, timeout=timeout)
    try:
        result = LocalMesh(mesh).up(opts, printer)
        if observability:
            printer.step("Starting Prometheus")
            url = start_observability(mesh, prometheus_port, metrics_gateway_port,
                                      printer.update)
            printer.done(f"Prometheus on {url}, scraping every proxy every 5 s; "
                         "see `ambientctl dashboard`")
    except AmbientctlError:
        printer.fail()
        raise
    _report(mesh, result, printer)


def _report(mesh: MeshContext, result: UpResult, printer: StepPrinter) -> None:
    s = result.settings
    prefix = "" if mesh.cluster == "amesh" else f"--cluster {mesh.cluster} "
    if result.already_running:
        changed = (f"Restarted {', '.join(result.restarted)}." if result.restarted
                   else "Nothing was changed.")
        printer.note(f"The local mesh {mesh.cluster!r} is already running: nodes "
                     f"{', '.join(s.nodes)}, admin API {s.admin_addr}, workloads from "
                     f"{s.manifests}. {changed}")
        printer.note(f"See `ambientctl {prefix}status`; add workloads with "
                     f"`ambientctl {prefix}apply -f DIR`; start over with "
                     f"`ambientctl {prefix}down` first.")
        return
    printer.note(f"\n[bold]Local mesh {mesh.cluster!r} is ready[/bold]: {len(s.nodes)} nodes, "
                 f"{result.pods} pods, state in {mesh.layout.base}")
    text = NEXT_STEPS_DEMO.format(py=sys.executable) if s.manifests == "demo" else NEXT_STEPS
    if prefix:
        text = text.replace("ambientctl ", f"ambientctl {prefix}").replace(
            "-m ambientctl.demo_traffic", f"-m ambientctl.demo_traffic {prefix}".rstrip())
    click.echo(text)

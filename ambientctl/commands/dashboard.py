"""`ambientctl dashboard`: serve the live mesh dashboard on 127.0.0.1."""

from __future__ import annotations

import click

from ambientctl.context import MeshContext
from ambientctl.errors import AmbientctlError
from ambientctl.localmesh import port_free

DEFAULT_PORT = 15080


@click.command("dashboard")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT,
              show_default=True, help="Port on 127.0.0.1 to serve the page on.")
@click.option("--prometheus", "prometheus_url", default=None, metavar="URL",
              help="Read metrics from this Prometheus (default: the one `up "
                   "--observability` started; without one, scrape the proxies directly).")
@click.pass_obj
def command(mesh: MeshContext, port: int, prometheus_url: str | None) -> None:
    """Serve a live web page of the local mesh on http://127.0.0.1:PORT/: the service
    graph (requests/s, success %, p99, bytes/s per edge; a lock where mTLS, the
    waypoint that carried it, red where a policy denied), golden metrics per workload
    with sparklines, denied connections with the denying policy, and the health
    `ambientctl status` reports. Refreshes every 3 s; serves until Ctrl-C and opens
    no browser by itself. Needs root (it reads the proxies inside their namespaces).

    \b
    Examples:
      sudo ambientctl dashboard                 # then open http://127.0.0.1:15080/
      sudo ambientctl dashboard --port 8080
      sudo ambientctl dashboard --prometheus http://127.0.0.1:9090
    """
    mesh.require_settings()
    mesh.runtime("dashboard")  # fails early without root
    if not port_free(port):
        raise AmbientctlError(f"port 127.0.0.1:{port} is already in use",
                              "pick another with --port")
    from ambientctl.dashboard.server import serve

    def ready(url: str) -> None:
        click.echo(f"Dashboard of mesh {mesh.cluster!r}: {url}  (Ctrl-C to stop)", err=False)

    serve(mesh, port, prometheus_url, on_ready=ready)

"""`ambientctl logs COMPONENT`: the log file of one process of the local mesh."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import click

from ambientctl.context import MeshContext
from ambientctl.errors import BadArgument, MeshNotRunning


def tail(path: Path, lines: int) -> list[str]:
    with open(path, errors="replace") as f:
        return list(deque(f, maxlen=lines)) if lines > 0 else f.readlines()


def pod_log(mesh: MeshContext, ref: str) -> Path:
    """A pod's output, kept by its node agent: nodes/<node>/logs/<ns>.<pod>.<container>.log
    (the first container's when a pod has several)."""
    ns, _, name = ref.partition("/")
    found = sorted((mesh.layout.base / "nodes").glob(f"*/logs/{ns}.{name}.*.log"))
    if not found:
        raise BadArgument(f"no logs for pod {ref}",
                          "is it scheduled? `ambientctl get pods -A` lists pods and nodes")
    return found[0]


@click.command("logs")
@click.argument("component", required=False)
@click.option("-n", "--tail", "lines", type=int, default=50, show_default=True,
              help="Lines from the end (0: all).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C stops).")
@click.pass_obj
def command(mesh: MeshContext, component: str | None, lines: int, follow: bool) -> None:
    """Show the log of COMPONENT: controller, node-1, node-2, ... or of a pod (NS/POD).

    Without COMPONENT, lists the components that have logs.

    \b
    Examples:
      sudo ambientctl logs controller
      sudo ambientctl logs node-1 -f
      sudo ambientctl logs demo/frontend-0
    """
    available = mesh.layout.components()
    if component is None:
        if not available:
            raise MeshNotRunning(mesh.cluster)
        for name in available:
            click.echo(name)
        return
    path = pod_log(mesh, component) if "/" in component else mesh.layout.log_file(component)
    if not path.exists():
        if not available:
            raise MeshNotRunning(mesh.cluster)
        raise BadArgument(f"no logs for {component!r}",
                          f"components: {', '.join(available)}")
    for line in tail(path, lines):
        click.echo(line, nl=False)
    if not follow:
        return
    with open(path, errors="replace") as f:
        f.seek(0, 2)
        try:
            while True:
                line = f.readline()
                if line:
                    click.echo(line, nl=False)
                else:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            return

"""`ambientctl down`: stop the local mesh and remove every trace of it."""

from __future__ import annotations

import sys

import click

from ambientctl.context import MeshContext
from ambientctl.localmesh import LocalMesh
from ambientctl.options import output_option
from ambientctl.output import emit
from ambientctl.progress import StepPrinter


@click.command("down")
@output_option
@click.pass_obj
def command(mesh: MeshContext, fmt: str) -> None:
    """Stop every process of the local mesh and remove its network namespaces, links,
    cgroups, pinned BPF objects and state directory. Safe to run twice, and after a
    crash (it finds leftovers by the cluster's name prefix). Needs root.

    Exits 1 only if something could not be removed (and lists it).

    \b
    Examples:
      sudo ambientctl down
      sudo ambientctl --cluster dev down -o json
    """
    printer = StepPrinter()
    if fmt == "table":
        printer.step(f"Removing the local mesh {mesh.cluster!r}")
    before, left = LocalMesh(mesh).down(printer if fmt == "table" else None)
    if fmt != "table":
        emit({"cluster": mesh.cluster, "removed": before.as_dict(), "left": left.as_dict(),
              "clean": left.empty()}, fmt)
    elif before.empty():
        printer.done(f"Nothing to remove: no trace of a local mesh {mesh.cluster!r}")
    else:
        b = before
        printer.done(f"Removed {len(b.processes)} processes, {len(b.netns)} network "
                     f"namespaces, {len(b.cgroups)} cgroup trees, {len(b.pins)} BPF pins, "
                     f"state in {mesh.layout.base}")
    if not left.empty():
        click.echo(f"error: could not remove: {left.as_dict()}", err=True)
        sys.exit(1)

"""`ambientctl apply -f FILE|DIR|-`: create or update objects."""

from __future__ import annotations

import click

from ambientctl import manifests
from ambientctl.context import MeshContext
from ambientctl.errors import BadArgument
from ambientctl.options import output_option
from ambientctl.output import emit


@click.command("apply")
@click.option("-f", "--filename", "files", multiple=True, required=True, metavar="FILE|DIR|-",
              help="YAML file, directory of YAML files, or - for stdin (repeatable).")
@output_option
@click.pass_obj
def command(mesh: MeshContext, files: tuple[str, ...], fmt: str) -> None:
    """Create or update the objects in FILE (Kubernetes-style YAML, many documents).

    Everything is validated before anything is sent: an invalid file applies
    nothing, and the error names the file, document, object, field and reason.

    \b
    Examples:
      ambientctl apply -f examples/
      ambientctl apply -f policy.yaml
      cat route.yaml | ambientctl apply -f -
    """
    loaded = manifests.load(files)
    if not any(m.documents for m in loaded):
        raise BadArgument("no objects found in the given files",
                          "each YAML document needs apiVersion, kind and metadata.name")
    results = []
    with mesh.admin() as admin:
        for m in loaded:
            if m.documents:
                results.extend(admin.apply(m.text, m.name))
    _report(results, fmt)


def _report(results: list[dict[str, str]], fmt: str) -> None:
    if fmt != "table":
        emit({"results": results}, fmt)
        return
    for r in results:
        ref = f"{r.get('namespace')}/{r.get('name')}" if r.get("namespace") else r.get("name")
        click.echo(f"{r.get('kind')} {ref} {r.get('action')}")

"""`ambientctl delete`: remove objects by file or by kind and name."""

from __future__ import annotations

import sys

import click

from ambientctl import manifests
from ambientctl.commands.apply import _report
from ambientctl.context import MeshContext
from ambientctl.errors import BadArgument
from ambientctl.options import output_option
from mesh.config import resolve_kind


@click.command("delete")
@click.argument("kind", required=False)
@click.argument("names", nargs=-1)
@click.option("-f", "--filename", "files", multiple=True, metavar="FILE|DIR|-",
              help="Delete the objects named in these YAML files.")
@click.option("-n", "--namespace", default="default", show_default=True)
@output_option
@click.pass_obj
def command(mesh: MeshContext, kind: str | None, names: tuple[str, ...], files: tuple[str, ...],
            namespace: str, fmt: str) -> None:
    """Delete objects: those in FILE, or KIND NAME... in a namespace.

    Exits 1 when none of the named objects existed.

    \b
    Examples:
      ambientctl delete -f policy.yaml
      ambientctl delete authorizationpolicy inventory-frontend-only -n demo
    """
    if files and kind:
        raise BadArgument("give either -f FILE or KIND NAME, not both")
    results = []
    with mesh.admin() as admin:
        if files:
            for m in manifests.load(files):
                if m.documents:
                    results.extend(admin.delete_yaml(m.text, m.name))
        else:
            if not kind or not names:
                raise BadArgument("nothing to delete",
                                  "write `ambientctl delete KIND NAME -n NS` or "
                                  "`ambientctl delete -f FILE`")
            try:
                cls = resolve_kind(kind)
            except KeyError as e:
                raise BadArgument(str(e.args[0])) from None
            objects = [{"kind": cls.KIND, "namespace": namespace, "name": n} for n in names]
            results.extend(admin.delete_objects(objects))
    _report(results, fmt)
    if results and all(r.get("action") == "not found" for r in results):
        sys.exit(1)

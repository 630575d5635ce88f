"""ambientctl: the command line of ambient-mesh.

Each command lives in its own module under ambientctl/commands/ and is registered here.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

import click

from ambientctl import preflight
from ambientctl.output import FORMATS, emit


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Drive ambient-mesh: check the machine, run a local mesh, inspect it.

    \b
    Start here:
      ambientctl check        is this machine ready?
      ambientctl up           start a local mesh with a demo app
      ambientctl status       is it healthy?
    """


@cli.command()
@click.option("-o", "--output", "fmt", type=FORMATS, default="table", show_default=True)
def check(fmt: str) -> None:
    """Preflight: root, kernel, BPF, cgroup v2, bpffs, bcc, headers, netns.

    Exits non-zero if any check fails; each failure says how to fix it.

    \b
    Example:
      sudo ambientctl check -o json
    """
    results = preflight.run_all()
    if fmt == "table":
        for r in results:
            mark = click.style("✓", fg="green") if r.ok else click.style("✗", fg="red")
            click.echo(f"{mark} {r.name}: {r.detail}")
            if not r.ok:
                click.echo(f"    fix: {r.fix}")
    else:
        emit({"ok": all(r.ok for r in results), "checks": [asdict(r) for r in results]}, fmt)
    sys.exit(0 if all(r.ok for r in results) else 1)


def main() -> None:
    cli(prog_name="ambientctl")


if __name__ == "__main__":
    main()

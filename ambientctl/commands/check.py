"""`ambientctl check`: preflight of the machine."""

from __future__ import annotations

import sys
from dataclasses import asdict

import click

from ambientctl import preflight
from ambientctl.options import output_option
from ambientctl.output import emit


@click.command("check")
@output_option
def command(fmt: str) -> None:
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

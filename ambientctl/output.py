"""Rendering for read commands: every one takes `-o table|json|yaml`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click
import yaml
from rich.console import Console
from rich.table import Table

FORMATS = click.Choice(["table", "json", "yaml"])


def make_console() -> Console:
    """Wide and unwrapped when not a terminal (pipes, CI logs, tests), so lines stay
    whole and greppable."""
    console = Console(highlight=False, emoji=False)
    if not console.is_terminal:
        console = Console(highlight=False, emoji=False, width=200, soft_wrap=True)
    return console


def emit(data: Any, fmt: str, columns: Sequence[str] = (), rows: Sequence[Sequence[Any]] = (),
         title: str | None = None) -> None:
    """Print `data` as JSON/YAML, or `rows` as a table under `columns`."""
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
    elif fmt == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), nl=False)
    else:
        table = Table(title=title, header_style="bold")
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*(str(c) for c in row))
        make_console().print(table)

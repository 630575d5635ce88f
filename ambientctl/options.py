"""Options shared by many commands, so every read command spells them the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ambientctl.output import FORMATS

F = TypeVar("F", bound=Callable[..., Any])


def output_option(func: F) -> F:
    return click.option("-o", "--output", "fmt", type=FORMATS, default="table",
                        show_default=True, help="Output format.")(func)


def namespace_options(func: F) -> F:
    func = click.option("-A", "--all-namespaces", "all_namespaces", is_flag=True,
                        help="Every namespace.")(func)
    return click.option("-n", "--namespace", default=None, metavar="NAMESPACE",
                        help="Namespace (default: default, as kubectl).")(func)


def effective_namespace(namespace: str | None, all_namespaces: bool) -> str | None:
    """None means every namespace."""
    if all_namespaces:
        return None
    return namespace or "default"

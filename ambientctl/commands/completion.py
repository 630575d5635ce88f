"""`ambientctl completion SHELL`: print the shell completion script."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def command(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL.

    \b
    Examples:
      eval "$(ambientctl completion bash)"          # this shell
      ambientctl completion bash > /etc/bash_completion.d/ambientctl
      ambientctl completion zsh > "${fpath[1]}/_ambientctl"
    """
    cls = get_completion_class(shell)
    if cls is None:  # click knows all three; kept for type narrowing
        raise click.BadParameter(f"unsupported shell {shell}")
    root = ctx.find_root()
    comp = cls(root.command, {}, "ambientctl", "_AMBIENTCTL_COMPLETE")
    click.echo(comp.source())

"""ambientctl: the command line of ambient-mesh.

Each command lives in its own module under ambientctl/commands/ and is registered here.
Errors a user can act on (AmbientctlError, ConfigError, runtime errors) are printed as
`error: ...` plus a `hint:` line, without a traceback; the exit code is non-zero.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Any

import click
import structlog

from ambientctl.errors import AmbientctlError
from ambientctl.layout import DEFAULT_CLUSTER, MeshLayout


def quiet_logging() -> None:
    """Libraries used in-process (the local runtime) log with structlog: keep their
    info lines out of the CLI's output, warnings go to stderr."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def fail(message: str, hint: str = "", code: int = 1) -> None:
    click.echo(click.style("error: ", fg="red", bold=True) + message, err=True)
    if hint:
        click.echo(click.style("hint: ", fg="yellow") + hint, err=True)
    sys.exit(code)


# Command name -> module under ambientctl/commands/. Imported on first use, so a
# command (and shell completion) only pays for what it needs.
COMMANDS: dict[str, str] = {
    "check": "check", "up": "up", "down": "down", "status": "status", "get": "get",
    "apply": "apply", "delete": "delete", "exec": "exec_", "config": "config",
    "certs": "certs", "metrics": "metrics", "logs": "logs", "explain": "explain",
    "install": "install", "completion": "completion", "dashboard": "dashboard",
}


class FriendlyGroup(click.Group):
    """Loads commands lazily, and turns the errors a user can fix into a message and a
    hint instead of a trace."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        command: click.Command = importlib.import_module(
            f"ambientctl.commands.{module}").command
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AmbientctlError as e:
            fail(e.message, e.hint, e.exit_code)
        except Exception as e:
            from mesh.config import ConfigError
            from mesh.runtime.errors import RuntimeError_

            if isinstance(e, ConfigError):
                fail("invalid configuration, nothing was applied:\n  " +
                     "\n  ".join(str(i) for i in e.issues),
                     "fix the named field and run the command again")
            if isinstance(e, RuntimeError_):
                fail(str(e))
            raise


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cluster", envvar="AMBIENTCTL_CLUSTER", default=DEFAULT_CLUSTER,
              show_default=True, metavar="NAME",
              help="Which local mesh (state under /run/ambientmesh/NAME). "
                   "Env: AMBIENTCTL_CLUSTER.")
@click.option("--admin-addr", envvar="AMBIENTCTL_ADMIN_ADDR", default=None, metavar="HOST:PORT",
              help="Controller admin API (default: the one `up` started). "
                   "Env: AMBIENTCTL_ADMIN_ADDR.")
@click.option("--admin-token-file", envvar="AMBIENTCTL_ADMIN_TOKEN_FILE", default=None,
              type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="Bearer token for writes (default: the running mesh's). "
                   "Env: AMBIENTCTL_ADMIN_TOKEN_FILE.")
@click.pass_context
def cli(ctx: click.Context, cluster: str, admin_addr: str | None,
        admin_token_file: Path | None) -> None:
    """Drive ambient-mesh: check the machine, run a local mesh, inspect it.

    \b
    Start here:
      sudo ambientctl check       is this machine ready?
      sudo ambientctl up          start a local mesh with a demo shop
      sudo ambientctl status      is it healthy?
      sudo ambientctl explain demo/frontend-0 catalog.demo:80/items
      sudo ambientctl down        remove every trace

    \b
    Shell completion (bash): eval "$(ambientctl completion bash)"
    """
    quiet_logging()
    from ambientctl.context import MeshContext

    ctx.obj = MeshContext(MeshLayout(cluster), admin_addr, admin_token_file)




def main() -> None:
    cli(prog_name="ambientctl")


if __name__ == "__main__":
    main()

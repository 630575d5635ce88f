"""`ambient-controller`: the control plane process (local mode: also API server and
scheduler). Logs are structlog JSON on stderr."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import click
import structlog

from controller.app import Controller, ControllerSettings
from controller.state import StateError


def configure_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise click.BadParameter(f"unknown log level {level!r}", param_hint="--log-level")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


async def _serve(settings: ControllerSettings) -> None:
    controller = Controller(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with controller.running():
        await stop.wait()
    structlog.get_logger("controller").info("controller_stopped")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory of Kubernetes-style YAML (watched; apply/delete persist here).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/run/ambientmesh/controller"), show_default=True,
              help="Secrets (node-token secret, admin token), CA and runtime state.")
@click.option("--grpc-addr", default="127.0.0.1:15012", show_default=True,
              help="Config push, node service and CA (gRPC).")
@click.option("--admin-addr", default="127.0.0.1:15014", show_default=True,
              help="Admin API (HTTP JSON) and /metrics.")
@click.option("--advertise-addr", default="",
              help="Controller address given to waypoint pods (default: --grpc-addr).")
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option("--debounce", type=float, default=0.05, show_default=True,
              help="Seconds of quiet before a change is pushed (bursts push once).")
@click.option("--log-level", default="info", show_default=True)
def main(config_dir: Path, state_dir: Path, grpc_addr: str, admin_addr: str,
         advertise_addr: str, trust_domain: str, debounce: float, log_level: str) -> None:
    """Run the ambient-mesh controller."""
    configure_logging(log_level)
    settings = ControllerSettings(
        config_dir=config_dir, state_dir=state_dir, grpc_addr=grpc_addr,
        admin_addr=admin_addr, advertise_addr=advertise_addr, trust_domain=trust_domain,
        debounce=debounce,
    )
    try:
        import uvloop

        uvloop.run(_serve(settings))
    except (StateError, OSError) as e:
        raise click.ClickException(str(e)) from e


if __name__ == "__main__":
    main()

"""`ambient-controller`: the control plane process (local mode: also API server and
scheduler). Logs are structlog JSON on stderr."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from pathlib import Path

import click
import structlog

from controller.app import Controller, ControllerSettings
from controller.kube.errors import KubeError
from controller.state import StateError
from mesh.logs import LogLevelError
from mesh.logs import configure_logging as shared_configure_logging
from mesh.ports import CONTROLLER_ADMIN_PORT, CONTROLLER_GRPC_PORT


def configure_logging(level: str) -> None:
    try:
        shared_configure_logging(level)
    except LogLevelError as e:
        raise click.BadParameter(str(e), param_hint="--log-level") from None


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
@click.option("--config-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of Kubernetes-style YAML (watched; apply/delete persist here). "
                   "Required with --source files.")
@click.option("--source", type=click.Choice(["files", "kubernetes"]), default="files",
              show_default=True, help="Where config comes from (kubernetes: list+watch).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --source kubernetes: kubeconfig file (default: in-cluster).")
@click.option("--waypoint-image", envvar="AMBIENT_WAYPOINT_IMAGE", default="ambient-mesh:dev",
              show_default=True, help="With --source kubernetes: image of waypoint pods.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/run/ambientmesh/controller"), show_default=True,
              help="Secrets (node-token secret, admin token), CA and runtime state.")
@click.option("--grpc-addr", default=f"127.0.0.1:{CONTROLLER_GRPC_PORT}", show_default=True,
              help="Config push, node service and CA (gRPC).")
@click.option("--admin-addr", default=f"127.0.0.1:{CONTROLLER_ADMIN_PORT}", show_default=True,
              help="Admin API (HTTP JSON) and /metrics.")
@click.option("--advertise-addr", default="",
              help="Controller address given to waypoint pods (default: --grpc-addr; with "
                   "--source kubernetes: the controller Service, "
                   f"ambient-controller.ambient-system.svc:{CONTROLLER_GRPC_PORT}).")
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option("--debounce", type=float, default=0.05, show_default=True,
              help="Seconds of quiet before a change is pushed (bursts push once).")
@click.option("--cert-ttl", type=click.FloatRange(min=1.0), default=None,
              help="Lifetime of workload certificates in seconds (default: 24 h). Node "
                   "agents renew at half-life, so a short one exercises rotation.")
@click.option("--log-level", default="info", show_default=True)
def main(config_dir: Path | None, source: str, kubeconfig: Path | None, waypoint_image: str,
         state_dir: Path, grpc_addr: str, admin_addr: str,
         advertise_addr: str, trust_domain: str, debounce: float, cert_ttl: float | None,
         log_level: str) -> None:
    """Run the ambient-mesh controller."""
    configure_logging(log_level)
    if config_dir is None and source == "files":
        raise click.UsageError("--config-dir is required with --source files")
    settings = ControllerSettings(
        config_dir=config_dir or state_dir / "config", source=source, state_dir=state_dir,
        grpc_addr=grpc_addr, admin_addr=admin_addr, advertise_addr=advertise_addr,
        trust_domain=trust_domain, debounce=debounce, cert_ttl=cert_ttl,
    )
    try:
        import uvloop

        if source == "kubernetes":
            from controller.kube.serve import KubeSettings, serve_until_signal

            kube = KubeSettings(kubeconfig=kubeconfig, waypoint_image=waypoint_image)
            if advertise_addr:  # what waypoint pods dial, instead of the default Service
                kube = dataclasses.replace(kube, controller_service=advertise_addr)
            uvloop.run(serve_until_signal(settings, kube))
        else:
            uvloop.run(_serve(settings))
    except (StateError, OSError, KubeError) as e:
        raise click.ClickException(str(e)) from e


if __name__ == "__main__":
    main()

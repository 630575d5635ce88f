"""`python -m nodeagent.k8s_main`: the node agent as the DaemonSet runs it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from mesh.kube.errors import KubeError
from mesh.logs import configure_logging, keep_console_renderers_out
from mesh.ports import CONTROLLER_GRPC_PORT, HEALTH_PORT
from nodeagent.allocator import use_system_allocator


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--node", envvar="NODE_NAME", required=True,
              help="This node's name (the DaemonSet passes spec.nodeName).")
@click.option("--controller",
              default=f"ambient-controller.ambient-system.svc:{CONTROLLER_GRPC_PORT}",
              show_default=True, help="Controller gRPC address.")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="Projected service-account token (audience ambient-mesh).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Default: in-cluster service account.")
@click.option("--proc-root", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/host/proc"), show_default=True,
              help="The host's /proc (mounted from the host; with hostPID /proc works too).")
@click.option("--health-addr", default=f"0.0.0.0:{HEALTH_PORT}", show_default=True)
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option("--log-level", default="info", show_default=True)
def main(node: str, controller: str, token_file: Path, kubeconfig: Path | None,
         proc_root: Path, health_addr: str, trust_domain: str, log_level: str) -> None:
    """Run the node agent for a Kubernetes node: capture the enrolled pods the kubelet
    runs here and serve them with the node proxy."""
    use_system_allocator()
    keep_console_renderers_out()  # before anything loads structlog
    configure_logging(log_level)
    if os.geteuid() != 0:
        click.echo("the node agent needs root (bpf, setns): run it privileged", err=True)
        sys.exit(1)
    fallback = os.environ.get("AMBIENT_FALLBACK_KERNEL_SOURCE")
    if fallback and not Path(f"/lib/modules/{os.uname().release}/build").exists():
        os.environ.setdefault("BCC_KERNEL_SOURCE", fallback)

    from mesh.kube.client import api_client
    from nodeagent.k8s_agent import KubeAgentConfig, KubeNodeAgent
    from nodeagent.lifecycle import stop_on_signals

    async def run() -> None:
        stop = stop_on_signals()
        async with await api_client(kubeconfig) as api:
            agent = KubeNodeAgent(KubeAgentConfig(
                node=node, controller=controller, token_file=token_file,
                trust_domain=trust_domain, proc_root=proc_root, health_addr=health_addr), api)
            await agent.run(stop)

    import uvloop

    try:
        uvloop.run(run())
    except KubeError as e:  # e.g. an unusable kubeconfig tokenFile: say so, no traceback
        raise click.ClickException(str(e)) from None


if __name__ == "__main__":
    main()

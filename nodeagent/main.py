"""`ambient-nodeagent`: the per-node agent process."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import click

from mesh.logs import configure_logging, keep_console_renderers_out
from mesh.ports import CONTROLLER_GRPC_PORT
from nodeagent.allocator import use_system_allocator


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--node", required=True, help="Name of the node this agent serves.")
@click.option("--cluster", default="amesh", show_default=True,
              help="Local cluster prefix (names of netns, cgroups, pins).")
@click.option("--controller", default=f"127.0.0.1:{CONTROLLER_GRPC_PORT}", show_default=True,
              help="Controller gRPC address (config push + CA).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="This node's bootstrap token (from the controller).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="Default: /run/ambientmesh/<cluster>/nodes/<node>.")
@click.option("--drain-seconds", default=5.0, show_default=True,
              help="On SIGTERM, how long established connections may finish.")
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Extra proxy processes. Default: none while idle, up to one per "
                   "other core while the agent is busy.")
@click.option("--tunnel-connect-timeout", type=click.FloatRange(min=0, min_open=True),
              default=5.0, show_default=True, envvar="AMBIENT_TUNNEL_CONNECT_TIMEOUT",
              help="Seconds to open an HBONE tunnel to a peer node (TCP connect, TLS, "
                   "CONNECT answer); then the app's connection is reset and the access "
                   "log says which phase timed out.")
@click.option("--tunnel-keepalive-interval", type=click.FloatRange(min=0), default=10.0,
              show_default=True, envvar="AMBIENT_TUNNEL_KEEPALIVE_INTERVAL",
              help="Send an HTTP/2 PING on a tunnel connection after this many seconds "
                   "without receiving anything (0: no keepalive).")
@click.option("--tunnel-keepalive-timeout", type=click.FloatRange(min=0, min_open=True),
              default=5.0, show_default=True, envvar="AMBIENT_TUNNEL_KEEPALIVE_TIMEOUT",
              help="A tunnel connection silent this long after a PING is dead: its "
                   "connections are reset and the next ones dial anew.")
@click.option("--max-connections-per-source", type=click.IntRange(min=1), default=4096,
              show_default=True, envvar="AMBIENT_MAX_CONNECTIONS_PER_SOURCE",
              help="Concurrent proxied connections one source may hold per proxy "
                   "process and path (per source pod outbound, per peer address inbound "
                   "plaintext and HBONE); the rest are reset and counted as "
                   "refused{cause=source_limit}, so one pod cannot spend the "
                   "descriptors every pod of the node needs.")
@click.option("--same-node-fast-path", type=click.Choice(["on", "off"]), default="on",
              show_default=True, envvar="AMBIENT_SAME_NODE_FAST_PATH",
              help="Connections between two pods of this node skip the HBONE tunnel: "
                   "the proxy takes the destination's decisions itself and splices the "
                   "two sockets in the kernel (off: always tunnel, for comparison).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def main(node: str, cluster: str, controller: str, token_file: Path, state_dir: Path | None,
         drain_seconds: float, trust_domain: str, workers: int | None,
         tunnel_connect_timeout: float, tunnel_keepalive_interval: float,
         tunnel_keepalive_timeout: float, max_connections_per_source: int,
         same_node_fast_path: str, log_level: str) -> None:
    """Run the node agent: pods, eBPF capture and the L4 mTLS node proxy.

    \b
    Example (what `ambientctl up` runs for each local node):
      ambient-nodeagent --node node-1 --token-file /run/ambientmesh/amesh/node-1.token
    """
    use_system_allocator()
    keep_console_renderers_out()  # before anything loads structlog
    configure_logging(log_level)
    if os.geteuid() != 0:
        click.echo("ambient-nodeagent needs root: it loads eBPF programs and enters network "
                   "namespaces. Run it with sudo.", err=True)
        sys.exit(1)
    from mesh.hbone import TunnelSettings
    from nodeagent.agent import AgentConfig, NodeAgent

    tunnel = TunnelSettings(connect_timeout=tunnel_connect_timeout,
                            keepalive_interval=tunnel_keepalive_interval,
                            keepalive_timeout=tunnel_keepalive_timeout)
    os.environ.update(tunnel.env())  # worker processes inherit the same settings
    from nodeagent.proxy.source_limit import ENV as SOURCE_LIMIT_ENV

    os.environ[SOURCE_LIMIT_ENV] = str(max_connections_per_source)  # agent and workers
    from nodeagent.proxy.same_node import ENV as SAME_NODE_ENV

    os.environ[SAME_NODE_ENV] = same_node_fast_path
    config = AgentConfig(
        node=node, cluster=cluster, controller=controller,
        token=token_file.read_text().strip(),
        state_dir=state_dir or Path("/run/ambientmesh") / cluster / "nodes" / node,
        trust_domain=trust_domain, drain_seconds=drain_seconds, workers=workers,
        tunnel=tunnel)
    agent = NodeAgent(config)
    try:
        import uvloop
    except ImportError:
        import structlog

        structlog.get_logger().warning("uvloop missing: using the slower stdlib event loop")
        asyncio.run(agent.run())
    else:
        # uvloop.run, not uvloop.install: pyroute2 (netlink) needs stdlib loops in the
        # worker threads that build pods, so the global policy must stay asyncio's.
        uvloop.run(agent.run())
    logging.shutdown()


if __name__ == "__main__":
    main()

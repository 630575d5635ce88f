"""`ambientctl exec NS/POD -- CMD...`: run a command inside a local pod."""

from __future__ import annotations

import os

import click

from ambientctl.context import MeshContext
from ambientctl.errors import BadArgument, PodMissing
from ambientctl.refs import parse_pod_ref
from mesh.runtime import LocalRuntime, Pod, PodNotFound


def find_pod(runtime: LocalRuntime, ref: str) -> Pod:
    ns, name = parse_pod_ref(ref)
    try:
        return runtime.get_pod(ns, name)
    except PodNotFound:
        raise PodMissing(f"{ns}/{name}", sorted(p.key for p in runtime.list_pods())) from None


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("pod", metavar="NAMESPACE/POD")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD...")
@click.pass_obj
def command(mesh: MeshContext, pod: str, argv: tuple[str, ...]) -> None:
    """Run CMD inside a local pod: its network namespace, its /etc/hosts and its
    cgroup, so its connections are captured by the mesh exactly like the pod's own.

    The exit code is the command's.

    \b
    Examples:
      sudo ambientctl exec demo/frontend-0 -- curl -s http://catalog.demo/items
      sudo ambientctl exec legacy/client -- python3 -c 'print(1)'
      sudo ambientctl exec demo/inventory-0 -- ip addr
    """
    if not argv:
        raise BadArgument("no command given", "write `ambientctl exec NS/POD -- CMD ARGS...`")
    runtime = mesh.runtime("exec")
    target = find_pod(runtime, pod)
    # Join the pod's cgroup first: capture programs select pods by cgroup.
    try:
        (target.cgroup_path / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as e:
        raise BadArgument(f"cannot join the cgroup of {target.key}: {e}",
                          "is the pod still running? `ambientctl get pods -A`") from None
    full = runtime.command(target, list(argv))
    os.execvp(full[0], full)

"""Build a node and pods in a short-lived child process.

Creating them needs netlink (pyroute2: ~10 MB of resident memory once imported, with
sqlite3, multiprocessing and unittest behind it). A long-running process that creates
pods now and then, the node agent, asks a child to do it and reads the records the
child wrote (the runtime is safe across processes), so it never carries that weight.

`python -m mesh.runtime.builder --cluster C --state-dir D --node N [NS/NAME ...]`
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from mesh.runtime.errors import BuildFailed
from mesh.runtime.local import LocalRuntime
from mesh.runtime.model import Node, Pod

BUILD_TIMEOUT = 300.0


def build_in_child(runtime: LocalRuntime, node: str, pods: Sequence[tuple[str, str]] = (),
                   timeout: float = BUILD_TIMEOUT) -> tuple[Node, list[Pod]]:
    """Create (or find) `node` and the pods (namespace, name) on it, in a child process;
    return them as this process sees them in the records."""
    argv = [sys.executable, "-m", "mesh.runtime.builder", "--cluster", runtime.cluster,
            "--state-dir", str(runtime.state_dir), "--node", node,
            *(f"{ns}/{name}" for ns, name in pods)]
    what = f"node {node}" + (f" and {len(pods)} pod(s)" if pods else "")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BuildFailed(what, -1, f"no answer within {timeout:.0f} s") from e
    if done.returncode != 0:
        raise BuildFailed(what, done.returncode, done.stderr)
    return runtime.get_node(node), [runtime.get_pod(ns, name) for ns, name in pods]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mesh.runtime.builder",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cluster", required=True)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--node", required=True)
    p.add_argument("pods", nargs="*", metavar="NAMESPACE/NAME")
    args = p.parse_args(argv)
    runtime = LocalRuntime(cluster=args.cluster, state_dir=args.state_dir)
    runtime.create_node(args.node)
    for key in args.pods:
        namespace, _, name = key.partition("/")
        if not namespace or not name:
            p.error(f"pods are NAMESPACE/NAME, not {key!r}")
        runtime.create_pod(args.node, namespace, name)


if __name__ == "__main__":
    main()

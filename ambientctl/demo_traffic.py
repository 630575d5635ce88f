"""`python -m ambientctl.demo_traffic`: send a little traffic through the demo shop and
show what the mesh saw: requests from outside the mesh (legacy/client -> frontend, in
plaintext), the frontend's calls to catalog (HTTP, via the waypoint, canary 90/10)
and inventory (raw TCP), all over mTLS, and one connection the policy refuses.

Exit code 0 when mesh traffic flowed and the refused connection was refused."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ambientctl import promtext
from ambientctl.cli import fail, quiet_logging
from ambientctl.commands.metrics import SUMMARY_COLUMNS, collect, summary_rows
from ambientctl.context import MeshContext
from ambientctl.errors import AmbientctlError, PodMissing
from ambientctl.layout import MeshLayout
from ambientctl.output import emit, make_console
from mesh.runtime import LocalRuntime, Pod, PodNotFound

CLIENT = [sys.executable, "-m", "ambientctl.demo.client"]


def pod(runtime: LocalRuntime, ns: str, name: str) -> Pod:
    try:
        return runtime.get_pod(ns, name)
    except PodNotFound:
        raise PodMissing(f"{ns}/{name}", sorted(p.key for p in runtime.list_pods())) from None


def run_client(runtime: LocalRuntime, where: Pod, args: list[str]) -> dict[str, Any]:
    out = runtime.run(where, [*CLIENT, *args], timeout=120)
    try:
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        raise AmbientctlError(f"the traffic client in {where.key} failed: "
                              f"{(out.stderr or out.stdout).strip()[-400:]}") from None


def ok_count(result: dict[str, Any], code: str) -> int:
    return int(result.get("codes", {}).get(code, 0))


def describe(result: dict[str, Any]) -> str:
    codes = ", ".join(f"{k}: {v}" for k, v in result.get("codes", {}).items())
    versions = result.get("versions") or {}
    split = (" | versions " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
             if versions else "")
    return f"{codes}{split} | p50 {result.get('p50_ms')} ms"


@click.command()
@click.option("--cluster", envvar="AMBIENTCTL_CLUSTER", default="amesh", show_default=True)
@click.option("--count", type=click.IntRange(1, 10000), default=20, show_default=True,
              help="Requests per flow.")
def main(cluster: str, count: int) -> None:
    """Send demo traffic and print a summary with the mesh's own metrics."""
    quiet_logging()
    mesh = MeshContext(MeshLayout(cluster))
    console = make_console()
    try:
        mesh.require_settings()
        runtime = mesh.runtime("demo_traffic")
        client = pod(runtime, "legacy", "client")
        frontend = pod(runtime, "demo", "frontend-0")
        inventory = pod(runtime, "demo", "inventory-0")

        console.print("[bold]Traffic[/bold]")
        # Pods outside the mesh have no service VIP routing in local mode (there is
        # no kube-proxy): the legacy client calls the frontend pod by its IP.
        outside = run_client(runtime, client, [f"http://{frontend.ip}:8080/",
                                               "--count", str(count)])
        console.print(f"  legacy/client -> demo/frontend-0 (plaintext into the mesh): "
                      f"{describe(outside)}")
        inside = run_client(runtime, frontend, ["http://catalog.demo/items",
                                                "--count", str(count)])
        console.print(f"  demo/frontend-0 -> catalog.demo (mTLS, waypoint, canary 90/10): "
                      f"{describe(inside)}")
        tcp = run_client(runtime, frontend, ["inventory.demo:9000", "--tcp",
                                             "--count", str(count)])
        console.print(f"  demo/frontend-0 -> inventory.demo:9000 (raw TCP over mTLS): "
                      f"{describe(tcp)}")
        denied = run_client(runtime, client, [f"{inventory.ip}:9000", "--tcp", "--count", "2",
                                              "--timeout", "3"])
        refused = ok_count(denied, "ok") == 0
        console.print(f"  legacy/client -> demo/inventory-0:9000 (policy allows only the "
                      f"frontend): {'refused, as it should be' if refused else 'NOT refused'}"
                      f" ({describe(denied)})")

        sources, problems = collect(mesh)
        rows = promtext.traffic(text for _, text in sources)
        console.print()
        emit(None, "table", SUMMARY_COLUMNS, summary_rows(rows),
             title="What the mesh saw (Istio standard metrics, merged from every proxy)")
        for p in problems:
            console.print(f"[yellow]note:[/yellow] no metrics from {p}")
        mtls = sum(r.connections for r in rows if r.security == "mutual_tls")
        console.print(f"\nmTLS connections recorded: {mtls:g}")
    except AmbientctlError as e:
        fail(e.message, e.hint)
        return
    flowed = ok_count(outside, "200") > 0 and ok_count(inside, "200") > 0 and \
        ok_count(tcp, "ok") > 0
    sys.exit(0 if flowed and refused and mtls > 0 else 1)


if __name__ == "__main__":
    main()

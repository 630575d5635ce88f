"""`ambientctl config dump NODE|WAYPOINT`: what the controller pushes to one proxy."""

from __future__ import annotations

from typing import Any

import click

from ambientctl.context import MeshContext
from ambientctl.options import output_option
from ambientctl.output import emit


@click.group("config")
def command() -> None:
    """Inspect the configuration pushed to proxies."""


def summary_rows(dump: dict[str, Any]) -> list[list[str]]:
    proxy = dump.get("proxy", {})
    snap = dump.get("snapshot", {})
    nack = proxy.get("lastNack")
    rows = [
        ["proxy", f"{proxy.get('type', '?')} {proxy.get('name', '?')}"],
        ["connected", "yes" if proxy.get("connected") else "no"],
        ["latest version", str(proxy.get("latestVersion", ""))],
        ["acked version", str(proxy.get("ackedVersion", "")) or "-"],
        ["last NACK", str(nack) if nack else "-"],
    ]
    for key, label in (("podsToRun", "pods to run"), ("workloads", "workloads"),
                       ("services", "services"), ("authorizations", "authorizations"),
                       ("workloadPolicies", "workload policies"), ("routes", "routes"),
                       ("trafficPolicies", "traffic policies")):
        items = snap.get(key) or []
        if items:
            names = ", ".join(sorted(f"{i.get('namespace', '')}/{i.get('name', '')}"
                                     if "name" in i else str(i.get("workloadUid", ""))[:8]
                                     for i in items))
            rows.append([label, f"{len(items)}: {names}"])
    return rows


@command.command("dump")
@click.argument("proxy", metavar="NODE|WAYPOINT")
@output_option
@click.pass_obj
def dump(mesh: MeshContext, proxy: str, fmt: str) -> None:
    """The snapshot the controller pushes to PROXY (a node name like node-1, or a
    waypoint as NS/NAME) with its version, the version the proxy ACKed and the last
    NACK. The table is a summary; -o json|yaml prints everything.

    \b
    Examples:
      ambientctl config dump node-1
      ambientctl config dump demo/waypoint -o yaml
    """
    with mesh.admin() as admin:
        data = admin.config_dump(proxy)
    if fmt != "table":
        emit(data, fmt)
        return
    emit(None, "table", ["FIELD", "VALUE"], summary_rows(data), title=f"config of {proxy}")

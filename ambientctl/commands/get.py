"""`ambientctl get KIND [NAME]`: list objects as the controller holds them."""

from __future__ import annotations

import click

from ambientctl import tables
from ambientctl.context import MeshContext
from ambientctl.errors import BadArgument, ControllerRefused
from ambientctl.options import effective_namespace, namespace_options, output_option
from ambientctl.output import emit
from mesh.config import resolve_kind

KIND_HELP = ("pods, services, policies, routes, nodes, waypoints, namespaces, deployments, "
             "gateways, httproutes, authorizationpolicies, peerauthentications, trafficpolicies")


def kinds_for(word: str) -> list[str]:
    low = word.lower()
    if low in tables.GROUPS:
        return list(tables.GROUPS[low])
    if low in ("node", "nodes", "no"):
        return ["Node"]
    try:
        return [resolve_kind(word).KIND]
    except KeyError:
        raise BadArgument(f"unknown kind {word!r}", f"known kinds: {KIND_HELP}") from None


@click.command("get")
@click.argument("kind", metavar="KIND")
@click.argument("name", required=False)
@namespace_options
@output_option
@click.pass_obj
def command(mesh: MeshContext, kind: str, name: str | None, namespace: str | None,
            all_namespaces: bool, fmt: str) -> None:
    """List objects of KIND (or the one named NAME).

    KIND is a kind or a group: pods, services, policies (authorization, peer
    authentication and traffic policies), routes, nodes, waypoints, namespaces ...
    `-o json` prints a Kubernetes-style List; pods carry spec.nodeName and
    status.podIP.

    \b
    Examples:
      ambientctl get pods -A
      ambientctl get services -n demo -o yaml
      ambientctl get policies -n demo
      ambientctl get pod frontend-0 -n demo -o json
    """
    kinds = kinds_for(kind)
    ns = effective_namespace(namespace, all_namespaces)
    items = []
    with mesh.admin() as admin:
        for k in kinds:
            cluster_scoped = k in ("Node", "Namespace")
            found = admin.list_objects(k, None if cluster_scoped else ns)
            if not cluster_scoped and ns is not None:
                found = [o for o in found if o.get("metadata", {}).get("namespace") == ns]
            items.extend(found)
        if kinds == ["Gateway"]:
            items = [o for o in items
                     if o.get("spec", {}).get("gatewayClassName") == "ambient-waypoint"]
        if name is not None:
            items = [o for o in items if o.get("metadata", {}).get("name") == name]
            if not items:
                where = "" if ns is None or kinds[0] in ("Node", "Namespace") else f" in {ns}"
                raise ControllerRefused(f"{kind} {name!r} not found{where}",
                                        f"list them with `ambientctl get {kind} -A`")
        enrolled = set(admin.status().get("enrolledPods", [])) if kinds == ["Pod"] else set()
    if name is not None and fmt != "table":
        emit(items[0], fmt)
        return
    if fmt != "table":
        emit({"apiVersion": "v1", "kind": "List", "items": items}, fmt)
        return
    if not items:
        where = "" if ns is None else f" in namespace {ns}"
        click.echo(f"No resources found{where}." + ("" if ns is None else " (-A: every namespace)"))
        return
    columns, rows = tables.rows_for(kinds, items, enrolled)
    emit(None, "table", columns, rows)

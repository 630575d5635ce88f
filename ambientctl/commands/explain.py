"""`ambientctl explain SRC DST[:PORT][/PATH]`: how a request would travel and be decided."""

from __future__ import annotations

import sys
from typing import Any

import click
from google.protobuf.json_format import ParseDict, ParseError

from ambientctl.context import MeshContext
from ambientctl.errors import AmbientctlError, BadArgument
from ambientctl.explain import Explainer, ExplainRequest, Explanation
from ambientctl.options import output_option
from ambientctl.output import emit, make_console
from ambientctl.refs import parse_destination, parse_pod_ref
from mesh.api import config_pb2 as pb


def _headers(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for v in values:
        name, sep, value = v.partition(":")
        if not sep or not name.strip():
            raise BadArgument(f"header {v!r} is not NAME:VALUE", "e.g. -H 'x-user: alice'")
        out.append((name.strip(), value.strip()))
    return tuple(out)


def render(e: Explanation) -> None:
    console = make_console()
    src, dst = e.source, e.destination
    membership = f"in the mesh as {src['identity']}" if src["enrolled"] else "not in the mesh"
    console.print(f"[bold]{src['pod']}[/bold] ({src['ip']} on {src['node']}, {membership})")
    what = dst.get("service") or dst.get("pod") or ""
    path = dst["path"] if dst["path"] != "/" else ""
    console.print(f"  -> [bold]{dst['input']}[/bold] = {dst['kind']} {what} "
                  f"{dst['address']}{path}")
    console.print()
    for i, step in enumerate(e.steps, 1):
        console.print(f"{i:>2}. [cyan]{step.stage:<10}[/cyan] {step.detail}", markup=True)
    console.print()
    if e.route:
        split = ", ".join(f"{b['service']} {b['percent']}%" for b in e.route["backends"])
        console.print(f"Route: {e.route['rule']} -> {split}")
    if e.allowed:
        console.print("[green]ALLOWED[/green]" + (f" by {e.decided_by}" if e.decided_by else
                                                 " (no policy restricts it)"))
    else:
        console.print(f"[red]DENIED[/red] by {e.decided_by or 'the mesh'}: {e.reason}")


@click.command("explain")
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DST[:PORT][/PATH]")
@click.option("-X", "--method", default="GET", show_default=True, help="HTTP method (L7).")
@click.option("-H", "--header", "headers", multiple=True, metavar="NAME:VALUE",
              help="Request header for route matching (repeatable).")
@click.option("--exit-code", is_flag=True, help="Exit 1 when the request would be denied.")
@output_option
@click.pass_obj
def command(mesh: MeshContext, source: str, destination: str, method: str,
            headers: tuple[str, ...], exit_code: bool, fmt: str) -> None:
    """Explain how a request from pod SRC (NS/POD) to DST would travel and be decided:
    capture, the endpoint or waypoint chosen, the mTLS identities on each hop, the
    HTTPRoute rule matched and its backends, every policy evaluated and the one that
    decided. Computed from the configuration the controller pushes, with the
    proxies' own decision code; nothing is sent.

    DST is a service (catalog, catalog.demo, demo/catalog), a pod (demo/inventory-0)
    or an IP, with an optional :PORT (default: the service's first port) and /PATH.

    \b
    Examples:
      ambientctl explain demo/frontend-0 catalog.demo:80/items
      ambientctl explain demo/frontend-0 catalog.demo/items -X DELETE
      ambientctl explain legacy/client demo/inventory:9000
      ambientctl explain demo/frontend-0 demo/inventory-0:9000 -o json
    """
    src = parse_pod_ref(source)
    dest = parse_destination(destination)
    req = ExplainRequest(src, dest, method.upper(), _headers(headers))
    with mesh.admin() as admin:
        pods = admin.list_objects("Pod", src[0])
        pod = next((p for p in pods if p.get("metadata", {}).get("name") == src[1]), None)
        if pod is None:
            known = sorted(f"{p['metadata']['namespace']}/{p['metadata']['name']}"
                           for p in admin.list_objects("Pod"))
            raise AmbientctlError(f"pod {src[0]}/{src[1]} not found",
                                  f"known pods: {', '.join(known) or 'none'}")
        node = pod.get("spec", {}).get("nodeName")
        if not node:
            raise AmbientctlError(f"pod {src[0]}/{src[1]} is not scheduled to a node yet",
                                  "wait a moment and try again")

        def snapshot(proxy: str) -> pb.Snapshot:
            data: dict[str, Any] = admin.config_dump(proxy).get("snapshot", {})
            try:
                return ParseDict(data, pb.Snapshot(), ignore_unknown_fields=True)
            except ParseError as e:
                raise AmbientctlError(f"the config dump of {proxy} is unreadable: {e}") from None

        result = Explainer(snapshot).explain(req, node)
    if fmt == "table":
        render(result)
    else:
        emit(result.as_dict(), fmt)
    if exit_code and not result.allowed:
        sys.exit(1)

"""`ambientctl certs NS/POD`: the workload certificate a pod is served with."""

from __future__ import annotations

import click

from ambientctl import certinfo
from ambientctl.commands.exec_ import find_pod
from ambientctl.context import MeshContext
from ambientctl.errors import AmbientctlError
from ambientctl.options import output_option
from ambientctl.output import emit
from mesh.ports import HBONE_PORT


@click.command("certs")
@click.argument("pod", metavar="NAMESPACE/POD")
@output_option
@click.pass_obj
def command(mesh: MeshContext, pod: str, fmt: str) -> None:
    """Show the certificate the node proxy presents for POD on its HBONE port: SPIFFE
    id, serial, not-before/after, issuer, and whether the mesh's trust bundle
    vouches for it. Read with a real TLS handshake from the pod's node.

    \b
    Examples:
      sudo ambientctl certs demo/frontend-0
      sudo ambientctl certs demo/catalog-v1-0 -o json
    """
    runtime = mesh.runtime("certs")
    target = find_pod(runtime, pod)
    with mesh.admin() as admin:
        enrolled = set(admin.status().get("enrolledPods", []))
    if target.key not in enrolled:
        raise AmbientctlError(
            f"pod {target.key} is not in the mesh, so it has no workload certificate",
            "enroll its namespace with the label ambientmesh.io/dataplane-mode=ambient")
    node = runtime.get_node(target.node)
    try:
        der = certinfo.fetch_der(node.netns, str(target.ip), HBONE_PORT)
    except certinfo.ProbeError as e:
        raise AmbientctlError(
            f"could not read the certificate of {target.key}: {e}",
            f"is the node proxy of {target.node} serving it? `ambientctl logs {target.node}`",
        ) from None
    info = {"pod": target.key, "node": target.node, "address": f"{target.ip}:{HBONE_PORT}",
            **certinfo.describe(der),
            "trustedByMeshRoot": certinfo.issued_by_bundle(
                der, mesh.layout.controller_state / "ca" / "trust-bundle.pem")}
    if fmt != "table":
        emit(info, fmt)
        return
    emit(None, "table", ["FIELD", "VALUE"], [[k, str(v)] for k, v in info.items()],
         title=f"certificate of {target.key}")

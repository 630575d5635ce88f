"""L4 authorization at the destination's node proxy: the policies the snapshot in
force assigns to the workload, compiled once with the snapshot (nodeagent.state),
decided by the mesh's one engine (mesh.authz) at layer L4. Both inbound handlers
and `ambientctl explain` call `authorize`, so they cannot disagree."""

from __future__ import annotations

from mesh.api import config_pb2 as pb
from mesh.authz import Request, Verdict, evaluate
from nodeagent.state import ProxyState

__all__ = ["Verdict", "authorize"]


def authorize(state: ProxyState, workload: pb.Workload | None, principal: str | None,
              source_ip: str, port: int) -> Verdict:
    """One inbound connection to `workload` on `port` from a verified `principal`
    (None: plaintext) at `source_ip`. A workload the snapshot does not know is
    denied: its policies cannot be known."""
    if workload is None:
        return Verdict(False, "", "RBAC: access denied: the destination workload is not "
                                  f"in the config in force (version {state.version!r})")
    return evaluate(state.authorizations_for(workload),
                    Request(principal, port=port, source_ip=source_ip), "L4")

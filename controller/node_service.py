"""NodeService.ReportPods: node agents (kubelet + CNI in local mode) report the state
of the pods they run — IPs and phase — which turns pods into endpoints."""

from __future__ import annotations

import grpc
import structlog

from controller.registry import Registry
from controller.view import PodState, Ref
from mesh.api import config_pb2 as pb
from mesh.api import config_pb2_grpc as pb_grpc
from mesh.identity.errors import NodeAuthError
from mesh.identity.node_token import authenticate

_log = structlog.get_logger("controller.nodes")
PHASES = {pb.PENDING: "Pending", pb.RUNNING: "Running", pb.SUCCEEDED: "Succeeded",
          pb.FAILED: "Failed"}


class NodeServicer(pb_grpc.NodeServiceServicer):
    def __init__(self, registry: Registry, secret: bytes) -> None:
        self.registry = registry
        self._secret = secret

    async def ReportPods(
        self, request: pb.ReportPodsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportPodsResponse:
        try:
            node = authenticate(self._secret, context.invocation_metadata() or ())
        except NodeAuthError as e:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        if request.node != node:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"node {node} may only report its own pods (got {request.node!r})")
        states: list[tuple[Ref, PodState]] = [
            ((p.namespace, p.name),
             PodState(p.uid, node, p.pod_ip, p.pod_ipv6, PHASES.get(p.phase, "Pending"),
                      p.message))
            for p in request.pods
        ]
        unknown = self.registry.report_pods(node, states)
        _log.info("pods_reported", node=node, pods=len(states), unknown=len(unknown))
        return pb.ReportPodsResponse(unknown=unknown)


def add_node_service(server: grpc.aio.Server, registry: Registry, secret: bytes) -> None:
    pb_grpc.add_NodeServiceServicer_to_server(NodeServicer(registry, secret), server)

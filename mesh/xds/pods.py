"""PodReporter: the node agent's client for NodeService.ReportPods (pod IPs and phase,
the full state of the node's pods on every call)."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import grpc

from mesh.api import config_pb2 as pb
from mesh.api import config_pb2_grpc as pb_grpc
from mesh.identity.node_token import auth_metadata


class PodReporter:
    def __init__(self, target: str, *, node: str, token: str) -> None:
        self.node = node
        self._metadata = auth_metadata(node, token)
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = pb_grpc.NodeServiceStub(self._channel)

    async def report(self, pods: Sequence[pb.PodStatus], timeout: float = 10.0) -> list[str]:
        """Send the state of every pod on this node; returns those the controller does
        not place here (they should not be running)."""
        resp = await self._stub.ReportPods(
            pb.ReportPodsRequest(node=self.node, pods=list(pods)),
            metadata=self._metadata, timeout=timeout)
        return list(resp.unknown)

    async def aclose(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> PodReporter:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

"""Errors of the node agent, each naming the pod or peer concerned."""

from __future__ import annotations


class NodeAgentError(Exception):
    """Base class for node agent failures."""


class SnapshotRejected(NodeAgentError):
    """A pushed snapshot cannot be applied; it is NACKed and the last good one stays."""


class EnrollmentError(NodeAgentError):
    def __init__(self, pod: str, reason: str) -> None:
        super().__init__(f"cannot enroll pod {pod}: {reason}")
        self.pod = pod


class NoHealthyEndpoint(NodeAgentError):
    def __init__(self, service: str, port: int) -> None:
        super().__init__(
            f"service {service} port {port} has no reachable endpoint: check that its pods "
            "are running and that the selector matches them (`ambientctl get pods -n ...`)"
        )
        self.service = service

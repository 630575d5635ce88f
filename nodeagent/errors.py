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


class ConnectionRefusedByMesh(NodeAgentError):
    """The node proxy refuses a connection on purpose (fail closed): the client gets
    a reset, the access log says why (`reason`), a counter names the cause (`cause`)."""

    cause = "refused"


class WaypointUnavailable(ConnectionRefusedByMesh):
    """The destination is bound to a waypoint that cannot take traffic now (no ready
    address, or its Gateway does not exist): the connection is refused rather than
    sent around the waypoint's L7 policy."""

    cause = "waypoint_unavailable"

    def __init__(self, waypoint: str, destination: str, why: str) -> None:
        super().__init__(
            f"waypoint {waypoint} for {destination} is unavailable ({why}): connection "
            "refused so it cannot bypass the waypoint's L7 policy; check "
            f"`ambientctl get pods -n {waypoint.split('/', 1)[0]}` and the Gateway")
        self.waypoint = waypoint


class ConfigNotReceived(ConnectionRefusedByMesh):
    """No snapshot from the controller yet: policy (STRICT, L4 authorization,
    waypoints) is unknown, so nothing is served."""

    cause = "no_config"

    def __init__(self, pod: str) -> None:
        super().__init__(
            f"pod {pod}: no configuration received from the controller yet, policy unknown: "
            "connection refused (check the agent's `connected` in `ambientctl status`)")


class PolicyUnknown(ConnectionRefusedByMesh):
    """The snapshot in force has no workload policy for this pod (the controller has
    not seen it yet): its PeerAuthentication mode and authorizations are unknown."""

    cause = "policy_unknown"

    def __init__(self, pod: str, version: str) -> None:
        super().__init__(
            f"pod {pod}: config version {version or '?'} carries no policy for it yet "
            "(PeerAuthentication / AuthorizationPolicy unknown): connection refused")


class CertificatePending(ConnectionRefusedByMesh):
    """The pod is captured but its workload certificate is not issued (CA refused or
    unreachable): its connections are refused until it arrives, never sent plain."""

    cause = "certificate_pending"

    def __init__(self, pod: str, identity: str, why: str) -> None:
        super().__init__(
            f"pod {pod}: no certificate for {identity} yet ({why}): connection refused "
            "until the CA issues it (see `ambientctl status`)")

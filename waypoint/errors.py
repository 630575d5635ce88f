"""Typed errors of the waypoint; each message says what a user can do about it."""

from __future__ import annotations


class WaypointError(Exception):
    """Base class of every waypoint error."""


class RouteConfigError(WaypointError):
    """An HTTPRoute, TrafficPolicy or AuthorizationPolicy cannot be turned into the
    waypoint's route table; the message names the object and the field."""

    def __init__(self, obj: str, field: str, reason: str) -> None:
        super().__init__(f"{obj}: {field}: {reason}")
        self.obj = obj
        self.field = field
        self.reason = reason


class ProtocolError(WaypointError):
    """A peer sent bytes that are not valid HTTP; the connection is closed."""


class HeadTooLargeError(ProtocolError):
    """A request head (request line + headers) exceeded the waypoint's limit: 431."""


class HeadTimeoutError(ProtocolError):
    """A request head did not arrive in full within the time allowed (slowloris): 408."""


class UpstreamError(WaypointError):
    """A backend could not be reached or broke the exchange; retried when policy allows."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"backend {peer}: {reason}")
        self.peer = peer
        self.reason = reason


class UpstreamConnectError(UpstreamError):
    """Connecting to a backend failed (refused, unreachable, tunnel refused)."""


class UpstreamResetError(UpstreamError):
    """The backend closed or reset the exchange before a complete response head."""


class LimitExceededError(WaypointError):
    """A connection or pending-request limit of a TrafficPolicy is exhausted."""

    def __init__(self, limit: str, service: str) -> None:
        super().__init__(
            f"{limit} of {service} exhausted: raise connectionPool.{limit} in the "
            "TrafficPolicy or add capacity"
        )
        self.limit = limit
        self.service = service

"""The proxy side of the control plane: ConfigSubscriber (node agents and waypoints
receive their snapshots, ACK or NACK them, keep the last good one while the
controller is away and reconnect with backoff and jitter) and PodReporter (node
agents report their pods' IPs and phase).

Knows the wire protocol only: what a snapshot means is the caller's business."""

from mesh.backoff import Backoff
from mesh.xds.errors import SubscriptionError
from mesh.xds.pods import PodReporter
from mesh.xds.subscriber import ConfigSubscriber

__all__ = ["Backoff", "ConfigSubscriber", "PodReporter", "SubscriptionError"]

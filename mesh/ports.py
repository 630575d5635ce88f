"""The ports the mesh reserves in pods (DESIGN §2) and the controller listens on,
defined once.

Every component imports these names rather than writing the number: the eBPF side
renders them into the C programs (`ebpf.constants` re-exports them), the node proxy
listens on them in each pod, the controller writes them into waypoint pods, and
`ambientctl` dials them. A number written twice drifts; a name imported cannot.
"""

from __future__ import annotations

from typing import Final

OUTBOUND_PORT: Final = 15001
"""Captured outbound connect()s are rewritten to 127.0.0.1 / [::1] on this port."""
INBOUND_PORT: Final = 15006
"""Plaintext inbound connections are steered to the pod's listener on this port."""
HBONE_PORT: Final = 15008
"""Mesh traffic (HBONE over mTLS): never captured, in either direction; the waypoint
and every enrolled pod terminate tunnels here."""
METRICS_PORT: Final = 15020
"""Prometheus metrics, readiness and status of the node agent and the waypoint."""
HEALTH_PORT: Final = 15021
"""The Kubernetes node agent's health endpoint (liveness / readiness probes)."""


CONTROLLER_GRPC_PORT: Final = 15012
"""The controller's gRPC API (config snapshots, pod reports, certificate signing), as
istiod's 15012."""
CONTROLLER_ADMIN_PORT: Final = 15014
"""The controller's admin HTTP API and metrics (what ambientctl talks to)."""

"""The labels and annotations ambient-mesh reads, and the rules for reading them
(label or annotation, which object wins), kept in one place."""

from __future__ import annotations

from collections.abc import Mapping

DATAPLANE_MODE = "ambientmesh.io/dataplane-mode"
DATAPLANE_AMBIENT = "ambient"
DATAPLANE_NONE = "none"
USE_WAYPOINT = "ambientmesh.io/use-waypoint"
USE_WAYPOINT_NONE = "none"
EXCLUDE_PORTS = "ambientmesh.io/exclude-ports"
WAYPOINT_FOR = "ambientmesh.io/waypoint-for"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DEPLOYMENT_LABEL = "ambientmesh.io/deployment"
WAYPOINT_CLASS = "ambient-waypoint"
# On a waypoint Gateway: how many waypoint processes its pod runs (--workers).
WAYPOINT_WORKERS = "ambientmesh.io/waypoint-workers"
WAYPOINT_WORKERS_MAX = 16
# On a waypoint Gateway: the streams one inbound HBONE connection may carry
# (--hbone-max-streams); lower spreads one node proxy's tunnels over more connections,
# hence over the workers. Absent or unreadable: the default.
WAYPOINT_HBONE_MAX_STREAMS = "ambientmesh.io/waypoint-hbone-max-streams"
ROOT_NAMESPACE = "ambient-system"


def lookup(labels: Mapping[str, str], annotations: Mapping[str, str], key: str) -> str | None:
    """Annotation first, then label: both spellings are accepted everywhere."""
    if key in annotations:
        return annotations[key]
    return labels.get(key)


def parse_port_list(text: str) -> list[int]:
    """Parse "9000,9001" into ports; raises ValueError naming the bad entry."""
    ports: list[int] = []
    for part in text.split(","):
        item = part.strip()
        if not item:
            continue
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise ValueError(f"{item!r} is not a port number 1-65535")
        ports.append(int(item))
    return ports


def waypoint_workers(annotations: Mapping[str, str]) -> int:
    """The Gateway's worker count: 1 when absent; an unreadable or out-of-range value
    also gives 1 (the waypoint still runs, as one process) -- clamped, never an error
    that would leave the Gateway without a waypoint."""
    text = annotations.get(WAYPOINT_WORKERS, "").strip()
    if not text.isdigit():
        return 1
    return max(1, min(WAYPOINT_WORKERS_MAX, int(text)))


def waypoint_args(annotations: Mapping[str, str]) -> list[str]:
    """The waypoint command-line options a Gateway's annotations ask for."""
    args: list[str] = []
    workers = waypoint_workers(annotations)
    if workers > 1:
        args += ["--workers", str(workers)]
    streams = annotations.get(WAYPOINT_HBONE_MAX_STREAMS, "").strip()
    if streams.isdigit() and 1 <= int(streams) <= 1 << 20:
        args += ["--hbone-max-streams", str(int(streams))]
    return args

"""Tunables of HBONE connections, defaulting to what measured fastest here (DESIGN §9),
and the liveness bounds a user of Istio ambient expects (docs/reliability.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh.hbone.errors import HboneSettingsError

MIB = 1024 * 1024

# The liveness settings as environment variables: how the node agent's flags reach
# its worker processes, and how a DaemonSet can set them.
ENV_VARS = {
    "connect_timeout": "AMBIENT_TUNNEL_CONNECT_TIMEOUT",
    "keepalive_interval": "AMBIENT_TUNNEL_KEEPALIVE_INTERVAL",
    "keepalive_timeout": "AMBIENT_TUNNEL_KEEPALIVE_TIMEOUT",
}


@dataclass(frozen=True)
class TunnelSettings:
    # 16 MiB stream windows gave ~2x the throughput of 64 KiB (DESIGN §9).
    stream_window: int = 16 * MIB
    # The connection window bounds the bytes buffered across all streams of one peer.
    connection_window: int = 64 * MIB
    # Largest legal HTTP/2 frame: fewer frames through the pure-Python h2 codec.
    max_frame_size: int = 16 * MIB - 1
    # What a server lets one client multiplex on one connection.
    max_concurrent_streams: int = 4096
    # Read buffer reused for every TLS read (BufferedProtocol): no per-read allocation.
    read_buffer: int = 256 * 1024
    # Bytes a stream may queue beyond its flow-control window before writers wait.
    stream_high_water: int = 1 * MIB
    # TLS transport write buffer limit before every stream's writers wait.
    transport_high_water: int = 1 * MIB
    # Server side: how long an accepted connection may take to finish TLS.
    handshake_timeout: float = 10.0
    # Writes leave at once when the previous one came at least this many seconds ago,
    # else they are batched into one flush at the next event-loop turn (one TLS record
    # for a burst). Default: always batch. Sending a lone message at once (e.g. 50e-6)
    # measured no faster here and cost writes and wake-ups (docs/performance.md).
    flush_gap: float = math.inf
    # HTTP/2 codec: "h2core" (ours, narrow and fast) or "h2" (the reference library).
    framing: str = "h2core"
    # Client side: one bound on opening a tunnel, TCP connect + TLS handshake + the
    # peer's SETTINGS + the CONNECT answer, so an unreachable peer is a clear error in
    # seconds instead of a connection hanging until the app gives up (ztunnel: 5 s).
    connect_timeout: float = 5.0
    # Both sides: a PING after this long without receiving a frame (0: no keepalive).
    # Pooled tunnels sit idle between uses; without it a dead link is noticed only
    # when TCP gives up, after ~15 minutes of retransmissions.
    keepalive_interval: float = 10.0
    # ...and the connection is declared dead when nothing arrives within this long
    # after the PING: every stream on it is reset and the pool dials anew.
    keepalive_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "keepalive_timeout", "handshake_timeout"):
            if not getattr(self, name) > 0:
                raise HboneSettingsError(f"TunnelSettings.{name} must be > 0 seconds, "
                                         f"not {getattr(self, name)}")
        if not self.flush_gap >= 0:
            raise HboneSettingsError(f"TunnelSettings.flush_gap must be >= 0 seconds, "
                                     f"not {self.flush_gap}")
        if self.keepalive_interval < 0:
            raise HboneSettingsError("TunnelSettings.keepalive_interval must be >= 0 "
                                     f"seconds (0 disables keepalive), not "
                                     f"{self.keepalive_interval}")
        if self.framing not in ("h2core", "h2"):
            raise HboneSettingsError(f'TunnelSettings.framing must be "h2core" or "h2", '
                                     f"not {self.framing!r}")

    @property
    def keepalive(self) -> bool:
        return self.keepalive_interval > 0

    def env(self) -> dict[str, str]:
        """The liveness settings as environment variables (see ENV_VARS)."""
        return {var: repr(float(getattr(self, name))) for name, var in ENV_VARS.items()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> TunnelSettings:
        """Defaults, with the liveness settings found in `environ` applied."""
        values: dict[str, Any] = {}
        for name, var in ENV_VARS.items():
            raw = environ.get(var)
            if raw is None or not raw.strip():
                continue
            try:
                values[name] = float(raw)
            except ValueError:
                raise HboneSettingsError(f"{var}={raw!r} is not a number of seconds") from None
        values.update(overrides)
        return cls(**values)

"""Tunables of HBONE connections, defaulting to what measured fastest here (DESIGN §9)."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


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
    handshake_timeout: float = 10.0
    # HTTP/2 codec: "h2core" (ours, narrow and fast) or "h2" (the reference library).
    framing: str = "h2core"

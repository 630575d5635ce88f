"""The control plane: sources (files, Kubernetes) -> registry -> CA and per-proxy
snapshots pushed over gRPC; status and admin API.

Must not import nodeagent, waypoint or ambientctl."""

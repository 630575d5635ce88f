"""The L7 waypoint proxy: HTTP/1.1, HTTP/2 and gRPC routing, canary weights,
retries, timeouts, resilience and L7 authorization.

Must not import controller, nodeagent or ambientctl."""

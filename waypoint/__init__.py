"""The L7 waypoint proxy: HTTP/1.1, HTTP/2 and gRPC routing, canary weights,
retries, timeouts, resilience and L7 authorization.

Owns everything between an accepted HBONE stream (or plain listener) and the backend
connection: the HTTP codecs (http1, http2), the request pipeline (pipeline.py, one
ordered list of stages) and its sans-I/O decision objects (routing, weighted, retry,
outlier, ratelimit, limits, faults, authz, tracing), the upstream pool, the
conversion of the controller's WAYPOINT snapshot (config.py), metrics, access log and
span export. See docs/waypoint.md.

Must not import controller, nodeagent or ambientctl; does not decide which traffic
goes through it (the controller and node proxies do)."""

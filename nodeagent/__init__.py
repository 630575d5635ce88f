"""The per-node agent: pod discovery, enrollment into eBPF capture, certificates
for the pods on its node, and the shared L4 node proxy (outbound, inbound, HBONE).

Must not import controller, waypoint or ambientctl."""

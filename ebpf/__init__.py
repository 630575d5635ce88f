"""eBPF programs (*.bpf.c, compiled by bcc at load time) and their Python loader:
outbound connect capture, original-destination recovery, inbound sk_lookup capture,
pinning under /sys/fs/bpf/ambientmesh/. Imports nothing from the other components."""

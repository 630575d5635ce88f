"""The numbers the BPF programs and the Python side must agree on, in one place.

Every value here reaches the C side as a `#define` rendered by `ebpf.layout`, so a
change here is a change everywhere; nothing in the .bpf.c files is a bare literal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

# Ports reserved inside every enrolled pod (DESIGN §2): defined once in mesh.ports,
# re-exported here so the layout renderer and the rest of ebpf/ read one namespace.
from mesh.ports import HBONE_PORT as HBONE_PORT
from mesh.ports import INBOUND_PORT as INBOUND_PORT
from mesh.ports import METRICS_PORT as METRICS_PORT
from mesh.ports import OUTBOUND_PORT as OUTBOUND_PORT

PROXY_MARK: Final = 0x539
"""SO_MARK the proxy sets on every socket it opens; such sockets are never captured."""

MAX_EXCLUDED_PORTS: Final = 16
"""Per pod and per direction: the exclusion list is a fixed array in the pod's map value,
so enrollment stays one map update."""

PIN_ROOT: Final = Path("/sys/fs/bpf/ambientmesh")
BPFFS_ROOT: Final = Path("/sys/fs/bpf")

# Linux ABI values bcc and the stdlib do not name for us.
AF_INET: Final = 2
AF_INET6: Final = 10
IPPROTO_TCP: Final = 6
LOOPBACK_IFINDEX: Final = 1
SO_NETNS_COOKIE: Final = 71
SO_ACCEPTCONN: Final = 30

# Capture switches stored per pod (PodConfig.flags).
FLAG_CAPTURE_OUTBOUND: Final = 1
FLAG_CAPTURE_INBOUND: Final = 2

# enum bpf_prog_type
PROG_TYPE_SOCK_OPS: Final = 13
PROG_TYPE_CGROUP_SOCK_ADDR: Final = 18
PROG_TYPE_SK_LOOKUP: Final = 30

# enum bpf_attach_type
ATTACH_CGROUP_SOCK_OPS: Final = 3
ATTACH_CGROUP_INET4_CONNECT: Final = 10
ATTACH_CGROUP_INET6_CONNECT: Final = 11
ATTACH_CGROUP_INET4_GETPEERNAME: Final = 29
ATTACH_CGROUP_INET6_GETPEERNAME: Final = 30
ATTACH_SK_LOOKUP: Final = 36

# statfs magics: how we tell a bpffs or a cgroup v2 directory from anything else.
BPF_FS_MAGIC: Final = 0xCAFE4A11
CGROUP2_SUPER_MAGIC: Final = 0x63677270

# Map capacities.
MAX_PODS: Final = 16384
MAX_ORIGINAL_DESTINATIONS: Final = 65536

"""eBPF programs (*.bpf.c, compiled by bcc at load time) and their Python loader:
outbound connect capture, original-destination recovery, inbound sk_lookup capture,
pinning under /sys/fs/bpf/ambientmesh/. Imports nothing from the other components.

Entry point: `Redirector.load(pin_name, attach_cgroup)` once per node, then
`enroll(EnrolledPod)` per pod; the proxy calls `original_destination(sock)` on what
it accepts and `register_inbound_listener(netns, sock)` for its 15006 listeners, and
marks its own sockets with PROXY_MARK. Map layouts: ebpf/layout.py and docs/ebpf.md.
It does not decide *which* pods to enroll (the node agent does) nor proxy anything.
"""

from ebpf.constants import HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_MARK
from ebpf.enrollment import EnrolledPod
from ebpf.errors import (
    AttachmentConflict,
    BpffsNotMounted,
    BpfSyscallError,
    CompileError,
    EbpfError,
    EnrollmentError,
    ListenerError,
    MapLayoutMismatch,
    NotCgroupV2,
    NotInstalled,
    OriginalDestinationUnknown,
)
from ebpf.pins import installed_pin_names
from ebpf.redirector import Redirector, uninstall

__all__ = [
    "HBONE_PORT",
    "INBOUND_PORT",
    "OUTBOUND_PORT",
    "PROXY_MARK",
    "AttachmentConflict",
    "BpfSyscallError",
    "BpffsNotMounted",
    "CompileError",
    "EbpfError",
    "EnrolledPod",
    "EnrollmentError",
    "ListenerError",
    "MapLayoutMismatch",
    "NotCgroupV2",
    "NotInstalled",
    "OriginalDestinationUnknown",
    "Redirector",
    "installed_pin_names",
    "uninstall",
]

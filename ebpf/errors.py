"""Typed errors of the eBPF layer; each message says what to do about it."""

from __future__ import annotations


class EbpfError(Exception):
    """Base of every error raised by the ebpf package."""


class BpffsNotMounted(EbpfError):
    def __init__(self, path: str) -> None:
        super().__init__(
            f"bpffs is not mounted at {path}: run `mount -t bpf bpf {path}` "
            "(pinned programs, maps and links live there)"
        )


class NotCgroupV2(EbpfError):
    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path} is not a cgroup v2 directory: attach at a directory of the unified "
            "hierarchy (/sys/fs/cgroup on pure v2 hosts, /sys/fs/cgroup/unified on hybrid ones)"
        )


class CompileError(EbpfError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            f"bcc could not compile or load the BPF programs: {detail}. Check that "
            "python3-bpfcc is installed and that kernel headers are reachable "
            "(/lib/modules/$(uname -r)/build, or BCC_KERNEL_SOURCE); `ambientctl check` "
            "diagnoses both"
        )


class BpfSyscallError(EbpfError):
    """A bpf(2) operation failed; errno and the operation are kept for callers."""

    def __init__(self, op: str, errno_: int, hint: str = "") -> None:
        import os

        self.op = op
        self.errno = errno_
        msg = f"{op} failed: {os.strerror(errno_)} (errno {errno_})"
        super().__init__(f"{msg}; {hint}" if hint else msg)


class NotInstalled(EbpfError):
    def __init__(self, pin_dir: str) -> None:
        super().__init__(
            f"no redirection installed at {pin_dir}: start the node agent (or "
            "`python -m ebpf run --pin-name NAME --cgroup PATH`) first"
        )


class MapLayoutMismatch(EbpfError):
    def __init__(self, path: str, detail: str, pin_name: str) -> None:
        super().__init__(
            f"pinned map {path} has another layout than this version expects ({detail}): "
            f"remove the old installation with `python -m ebpf uninstall --pin-name {pin_name}` "
            "(redirection stops until the agent starts again)"
        )


class AttachmentConflict(EbpfError):
    """The pins belong to programs attached somewhere else than requested."""


class EnrollmentError(EbpfError):
    """A pod could not be enrolled or unenrolled; the message names the pod."""


class ListenerError(EbpfError):
    """A socket cannot serve as a pod's inbound listener."""


class OriginalDestinationUnknown(EbpfError):
    """No capture record matches an accepted socket: it was not redirected by us."""

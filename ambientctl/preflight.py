"""`ambientctl check`: can this machine run the mesh? One check per prerequisite,
each failure carrying the command that fixes it."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MIN_KERNEL = (5, 10)
BPF_MAP_CREATE = 0
BPF_MAP_TYPE_ARRAY = 2
SYS_BPF = 321  # x86_64


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_root() -> CheckResult:
    ok = os.geteuid() == 0
    return CheckResult("root", ok, "running as root" if ok else f"running as uid {os.geteuid()}",
                       "" if ok else "eBPF, network namespaces and cgroups need root: use sudo")


def kernel_version(release: str) -> tuple[int, int]:
    parts = release.split("-")[0].split(".")
    return int(parts[0]), int(parts[1])


def check_kernel() -> CheckResult:
    release = platform.release()
    ok = kernel_version(release) >= MIN_KERNEL
    return CheckResult(
        "kernel version", ok, f"Linux {release}",
        "" if ok else "sk_lookup, cgroup sock_addr hooks and BPF links need Linux >= 5.10: "
        "upgrade the kernel",
    )


def check_bpf_syscall() -> CheckResult:
    """Create and close a one-entry array map: proof the bpf() syscall is usable."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    attr = (ctypes.c_uint32 * 16)(BPF_MAP_TYPE_ARRAY, 4, 4, 1)
    fd = libc.syscall(SYS_BPF, BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        return CheckResult("bpf syscall", False, f"bpf(BPF_MAP_CREATE) failed: {os.strerror(err)}",
                           "run as root on a kernel built with CONFIG_BPF_SYSCALL=y; in a "
                           "container, run it privileged")
    os.close(fd)
    return CheckResult("bpf syscall", True, "bpf(BPF_MAP_CREATE) works")


def check_cgroup2() -> CheckResult:
    from mesh.runtime.cgroups import cgroup2_root
    from mesh.runtime.errors import CgroupV2Missing

    try:
        root = cgroup2_root()
    except CgroupV2Missing as e:
        return CheckResult("cgroup v2", False, "no cgroup v2 mount", str(e).split(": ", 1)[1])
    mode = "pure v2" if root == Path("/sys/fs/cgroup") else "hybrid"
    return CheckResult("cgroup v2", True, f"{root} ({mode})")


def check_bpffs(mounts: Path = Path("/proc/mounts")) -> CheckResult:
    for line in mounts.read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[1] == "/sys/fs/bpf" and fields[2] == "bpf":
            return CheckResult("bpffs", True, "mounted at /sys/fs/bpf")
    return CheckResult("bpffs", False, "/sys/fs/bpf is not a bpf filesystem",
                       "mount -t bpf bpf /sys/fs/bpf  (pins keep capture alive across "
                       "agent restarts)")


def check_bcc() -> CheckResult:
    try:
        import bcc

        bcc.BPF  # noqa: B018  (an empty directory imports as a namespace package)
    except (ImportError, AttributeError) as e:
        return CheckResult("bcc", False, f"cannot import bcc: {e}",
                           "apt-get install python3-bpfcc libbpfcc bpfcc-tools, then run "
                           "`make setup` (links Debian's bcc into .venv); never "
                           "`pip install bcc`, an unrelated package")
    return CheckResult("bcc", True, f"bcc {getattr(bcc, '__version__', '?')} from "
                       f"{Path(bcc.__file__).parent}")


def check_headers() -> CheckResult:
    """Actually compile and load a tiny program: the only proof the headers work."""
    try:
        from bcc import BPF
    except (ImportError, AttributeError):
        return CheckResult("kernel headers", False, "bcc missing, cannot compile",
                           "fix the bcc check first")
    try:
        prog = BPF(text="int probe(void *ctx) { return 0; }")
        prog.load_func("probe", BPF.SOCKET_FILTER)
        prog.cleanup()
    except Exception as e:  # bcc raises plain Exception on compile failures
        return CheckResult(
            "kernel headers", False, f"bcc could not compile a program: {e}",
            "apt-get install linux-headers-amd64 and link "
            f"/lib/modules/{platform.release()}/build to /usr/src/linux-headers-*-amd64 "
            "(`make setup` does this), or set BCC_KERNEL_SOURCE",
        )
    return CheckResult("kernel headers", True, "bcc compiled and loaded a test program")


def check_netns() -> CheckResult:
    name = f"amcheck-{os.getpid()}"
    add = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if add.returncode != 0:
        return CheckResult("network namespaces", False, add.stderr.strip() or "ip netns add failed",
                           "install iproute2 and run as root with CONFIG_NET_NS=y")
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    return CheckResult("network namespaces", True, "created and deleted a test namespace")


ALL_CHECKS: tuple[Callable[[], CheckResult], ...] = (
    check_root, check_kernel, check_bpf_syscall, check_cgroup2, check_bpffs, check_bcc,
    check_headers, check_netns,
)


def run_all() -> list[CheckResult]:
    return [check() for check in ALL_CHECKS]

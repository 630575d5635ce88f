"""What enrolling a pod means to the data path, as a plain record and a pure
translation into the pod's map value (unit-testable without a kernel)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ebpf import constants as C
from ebpf.errors import EnrollmentError
from ebpf.layout import MAX_POD_CGROUP_LEVEL, PodConfig
from ebpf.pins import is_cgroup2

ROOT_CGROUP_ID = 1  # the cgroup v2 root: where the node proxy runs


@dataclass(frozen=True)
class EnrolledPod:
    """A pod handed to the redirector.

    cgroup_path: the pod's cgroup v2 directory; its id (the directory's inode) selects
      the pod's sockets for outbound capture: those of tasks in it and in every cgroup
      below it (Kubernetes: give the pod-level cgroup, and every container is captured).
      cgroup_id may be given instead/as well.
    netns: name under /var/run/netns or an absolute path (/proc/<pid>/ns/net); the
      sk_lookup program is linked there.
    ips: the pod's addresses, as reported (checked, and logged at enrollment). Inbound
      capture does not depend on them: it takes every non-loopback address of the
      pod's netns, link-local and addresses added later included.
    """

    name: str
    netns: str | Path
    cgroup_path: Path | None = None
    cgroup_id: int | None = None
    ips: tuple[str, ...] = ()
    outbound_excluded_ports: tuple[int, ...] = ()
    inbound_excluded_ports: tuple[int, ...] = ()
    capture_outbound: bool = True
    capture_inbound: bool = True

    def __post_init__(self) -> None:
        for ip in self.ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise EnrollmentError(
                    f"pod {self.name}: ips: {ip!r} is not an IP address"
                ) from None
        check_ports(self.name, "outbound_excluded_ports", self.outbound_excluded_ports)
        check_ports(self.name, "inbound_excluded_ports", self.inbound_excluded_ports)
        if self.cgroup_path is None and self.cgroup_id is None:
            raise EnrollmentError(f"pod {self.name}: give cgroup_path or cgroup_id")

    def resolved_cgroup_id(self) -> int:
        """The kernel's cgroup id is the inode number of the cgroup directory."""
        if self.cgroup_id is not None:
            return self.cgroup_id
        assert self.cgroup_path is not None
        try:
            return os.stat(self.cgroup_path).st_ino
        except FileNotFoundError:
            raise EnrollmentError(
                f"pod {self.name}: cgroup {self.cgroup_path} does not exist (pod deleted?)"
            ) from None

    def check_capturable(self) -> None:
        """Refuse a cgroup outbound capture could never match, or would over-match:
        the root (every process on the node, the proxy included) and anything deeper
        than the programs' ancestor walk reaches. Failing here beats a pod that looks
        enrolled while its connections bypass the mesh."""
        if self.cgroup_id == ROOT_CGROUP_ID:
            raise EnrollmentError(
                f"pod {self.name}: cgroup id {ROOT_CGROUP_ID} is the cgroup root; give "
                "the pod's own cgroup (enrolling the root would capture every process)"
            )
        if self.cgroup_path is None:
            return
        level = cgroup_level(self.cgroup_path)
        if level == 0:
            raise EnrollmentError(
                f"pod {self.name}: {self.cgroup_path} is the cgroup root; give the pod's "
                "own cgroup (enrolling the root would capture every process)"
            )
        if level > MAX_POD_CGROUP_LEVEL:
            raise EnrollmentError(
                f"pod {self.name}: cgroup {self.cgroup_path} is {level} levels below the "
                f"cgroup root; outbound capture reaches pod cgroups up to level "
                f"{MAX_POD_CGROUP_LEVEL} (raise MAX_POD_CGROUP_LEVEL in ebpf/layout.py)"
            )


def cgroup_level(path: Path) -> int:
    """How far `path` is below the root of its cgroup2 mount (root = 0): the level
    bpf_get_current_ancestor_cgroup_id() counts in, as long as the mount shows the
    whole hierarchy (the host's mount, or a hostPath mount of it in a DaemonSet)."""
    current = Path(os.path.realpath(path))
    if not is_cgroup2(current):
        raise EnrollmentError(f"{path} is not a cgroup v2 directory")
    level = 0
    while current.parent != current and is_cgroup2(current.parent):
        current = current.parent
        level += 1
    return level


def check_ports(pod: str, field_name: str, ports: Sequence[int]) -> None:
    if len(ports) > C.MAX_EXCLUDED_PORTS:
        raise EnrollmentError(
            f"pod {pod}: {field_name}: {len(ports)} ports, at most {C.MAX_EXCLUDED_PORTS} "
            "may be excluded per direction"
        )
    for port in ports:
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise EnrollmentError(f"pod {pod}: {field_name}: {port!r} is not a port (1-65535)")


def pod_config(pod: EnrolledPod, netns_cookie: int) -> PodConfig:
    """The am_pods value for a pod: exclusion lists are zero-terminated arrays."""
    config = PodConfig(netns_cookie=netns_cookie)
    for i, port in enumerate(sorted(set(pod.outbound_excluded_ports))):
        config.outbound_excluded[i] = port
    for i, port in enumerate(sorted(set(pod.inbound_excluded_ports))):
        config.inbound_excluded[i] = port
    config.flags = (C.FLAG_CAPTURE_OUTBOUND if pod.capture_outbound else 0) | (
        C.FLAG_CAPTURE_INBOUND if pod.capture_inbound else 0
    )
    return config

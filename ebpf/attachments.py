"""Links: how programs are attached, and how a new agent takes them over.

Every attachment is a BPF link pinned on bpffs, never a bare bpf_prog_attach: a
pinned link survives the process that made it, and bpf_link_update swaps the program
behind it in one step, so an agent restart never leaves a window without capture.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import structlog

from ebpf import libbpf
from ebpf.errors import AttachmentConflict, BpfSyscallError

log = structlog.get_logger("ebpf")


def attach_or_adopt_cgroup(
    pin: Path, prog_fd: int, cgroup: Path, attach_type: int, what: str, pin_name: str
) -> tuple[int, bool]:
    """Return (link fd, adopted). An existing pinned link gets the new program
    atomically; otherwise a new link is created at the cgroup and pinned."""
    cgroup_id = os.stat(cgroup).st_ino
    if pin.exists():
        link_fd = libbpf.obj_get(str(pin))
        info = libbpf.link_info(link_fd)
        if info.target == 0:
            # The cgroup it was attached to is gone: the link is defunct, replace it.
            libbpf.close(link_fd)
            pin.unlink()
        elif info.target != cgroup_id or info.attach_type != attach_type:
            libbpf.close(link_fd)
            raise AttachmentConflict(
                f"{pin} is attached to cgroup id {info.target}, not {cgroup} (id {cgroup_id}): "
                f"use another pin name, or `python -m ebpf uninstall --pin-name {pin_name}`"
            )
        else:
            libbpf.link_update(link_fd, prog_fd, what)
            return link_fd, True
    cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        link_fd = libbpf.link_create(prog_fd, cgroup_fd, attach_type, f"{what} at {cgroup}")
    finally:
        os.close(cgroup_fd)
    pin_link(link_fd, pin)
    return link_fd, False


def attach_netns(pin: Path, prog_fd: int, netns: Path, attach_type: int, what: str) -> int:
    """Link a program to a network namespace (sk_lookup) and pin the link. Linking
    again an already pinned pod is a no-op returning the existing link."""
    if pin.exists():
        return libbpf.obj_get(str(pin))
    ns_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        link_fd = libbpf.link_create(prog_fd, ns_fd, attach_type, what)
    finally:
        os.close(ns_fd)
    pin_link(link_fd, pin)
    return link_fd


def update_link(pin: Path, prog_fd: int, what: str) -> None:
    """Swap the program of a pinned link; a link whose target died is unpinned."""
    link_fd = libbpf.obj_get(str(pin))
    try:
        libbpf.link_update(link_fd, prog_fd, what)
    except BpfSyscallError as exc:
        if exc.errno not in (67, 2):  # ENOLINK: target gone
            raise
        log.info("dropping defunct link", link=str(pin))
        pin.unlink(missing_ok=True)
    finally:
        libbpf.close(link_fd)


def detach_pinned(pin: Path, what: str) -> None:
    """Detach a pinned link now (not when its last reference goes) and unpin it."""
    if not pin.exists():
        return
    try:
        link_fd = libbpf.obj_get(str(pin))
    except BpfSyscallError:
        pin.unlink(missing_ok=True)
        return
    try:
        with contextlib.suppress(BpfSyscallError):  # already defunct: nothing to detach
            libbpf.link_detach(link_fd, what)
    finally:
        libbpf.close(link_fd)
    pin.unlink(missing_ok=True)


def pin_link(link_fd: int, pin: Path) -> None:
    try:
        libbpf.obj_pin(link_fd, str(pin))
    except BpfSyscallError:
        with contextlib.suppress(BpfSyscallError):
            libbpf.link_detach(link_fd, str(pin))
        libbpf.close(link_fd)
        raise


def replace_pin(fd: int, pin: Path) -> None:
    """Point a pin at a new object: pin beside it, then rename over the old one."""
    tmp = pin.with_name(f"{pin.name}-new")  # bpffs refuses names with dots
    tmp.unlink(missing_ok=True)
    libbpf.obj_pin(fd, str(tmp))
    try:
        os.replace(tmp, pin)
    except OSError:
        pin.unlink(missing_ok=True)
        os.replace(tmp, pin)

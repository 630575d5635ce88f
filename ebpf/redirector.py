"""Redirector: the one object a node agent uses to drive traffic capture on a node.

Loaded once per node (compile, load, attach or adopt); enrolling a pod afterwards
is a few map updates plus one sk_lookup link. Everything lives in pins under
/sys/fs/bpf/ambientmesh/<pin-name>/, so close() leaves capture running for the next
agent, and only uninstall() stops it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from ebpf import attachments, libbpf
from ebpf import constants as C
from ebpf.enrollment import EnrolledPod, pod_config
from ebpf.errors import (
    BpfSyscallError,
    EnrollmentError,
    ListenerError,
    NotCgroupV2,
    NotInstalled,
)
from ebpf.inbound import InboundCapture, make_template
from ebpf.layout import RETIRED_MAPS
from ebpf.maps import MapSet, validate_pinned
from ebpf.netns import netns_cookie, netns_path, socket_netns_cookie
from ebpf.original_dst import OriginalDestinations
from ebpf.pins import INBOUND_LINK_PREFIX, PinLayout, is_cgroup2, require_bpffs
from ebpf.programs import CGROUP_PROGRAMS, PROGRAMS, SK_LOOKUP, LoadedPrograms, compile_and_load

log = structlog.get_logger("ebpf")


class Redirector:
    """Capture for one node. Build with load() (an agent) or open() (a reader)."""

    def __init__(
        self, pins: PinLayout, maps: MapSet, inbound: InboundCapture,
        prog_fds: dict[str, int], loaded: LoadedPrograms | None,
    ) -> None:
        self.pins = pins
        self._maps = maps
        self._prog_fds = prog_fds
        self._loaded = loaded
        self._lock = threading.Lock()
        self._origins = OriginalDestinations(maps.original)
        self._inbound = inbound
        self.adopted = False

    # ---- construction ----------------------------------------------------------
    @classmethod
    def load(cls, pin_name: str, attach_cgroup: Path) -> Redirector:
        """Compile and load the programs, then attach them at `attach_cgroup` — or,
        when a previous agent left pinned links, swap the new programs into them
        atomically (maps and their contents are reused)."""
        pins = PinLayout(pin_name)
        require_bpffs(pins.root.parent)
        attach_cgroup = Path(attach_cgroup)
        if not is_cgroup2(attach_cgroup):
            raise NotCgroupV2(str(attach_cgroup))
        pins.create()
        for retired in RETIRED_MAPS:  # left by an earlier version; nothing reads it
            pins.map(retired).unlink(missing_ok=True)
        validate_pinned(pins)
        loaded = compile_and_load(pins)
        adopted = False
        maps: MapSet | None = None
        inbound: InboundCapture | None = None
        try:
            maps = MapSet(pins)
            inbound = InboundCapture(pins)
            # The template first: pods enrolled from now on (by any process) and the
            # pods already linked get instances of this code.
            inbound.store_template(make_template(
                loaded.instructions(SK_LOOKUP.name), loaded.map_fds()))
            for spec in CGROUP_PROGRAMS:
                link_fd, was_pinned = attachments.attach_or_adopt_cgroup(
                    pins.link(spec.name), loaded.fds[spec.name], attach_cgroup,
                    spec.attach_type, spec.name, pin_name,
                )
                libbpf.close(link_fd)
                adopted = adopted or was_pinned
            for link in pins.inbound_links():
                cgroup_id = int(link.name.removeprefix(INBOUND_LINK_PREFIX))
                prog_fd = inbound.instance(cgroup_id, _map_fds(maps, inbound), link.name)
                try:
                    attachments.update_link(link, prog_fd, link.name)
                finally:
                    libbpf.close(prog_fd)
            for spec in PROGRAMS:
                attachments.replace_pin(loaded.fds[spec.name], pins.prog(spec.name))
        except Exception:
            for opened in (maps, inbound):
                if opened is not None:
                    opened.close()
            loaded.close()
            raise
        self = cls(pins, maps, inbound, dict(loaded.fds), loaded)
        self.adopted = adopted
        log.info("redirection ready", pin=pin_name, cgroup=str(attach_cgroup), adopted=adopted)
        return self

    @classmethod
    def open(cls, pin_name: str) -> Redirector:
        """Use an installation some agent made, without compiling: enough to enroll,
        look up original destinations, report status or uninstall."""
        pins = PinLayout(pin_name)
        require_bpffs(pins.root.parent)
        if not pins.exists():
            raise NotInstalled(str(pins.dir))
        maps = MapSet(pins)
        fds: dict[str, int] = {}
        inbound: InboundCapture | None = None
        try:
            inbound = InboundCapture(pins)
            for spec in PROGRAMS:
                if pins.prog(spec.name).exists():
                    fds[spec.name] = libbpf.obj_get(str(pins.prog(spec.name)))
        except Exception:
            maps.close()
            if inbound is not None:
                inbound.close()
            for fd in fds.values():
                libbpf.close(fd)
            raise
        return cls(pins, maps, inbound, fds, None)

    # ---- pods --------------------------------------------------------------------
    def enroll(self, pod: EnrolledPod) -> None:
        """Start capturing a pod's traffic; idempotent, and re-enrolling updates its
        exclusions in place. Map updates first, the sk_lookup link last. Tasks in the
        pod's cgroup and in every cgroup below it (containers) are captured outbound;
        inbound, every new TCP connection to any non-loopback address of the pod's
        netns (registered IPs, link-local, addresses added later)."""
        cgroup_id = pod.resolved_cgroup_id()
        pod.check_capturable()
        ns = netns_path(pod.netns)
        try:
            cookie = netns_cookie(ns)
        except Exception as exc:
            raise EnrollmentError(f"pod {pod.name}: {exc}") from exc
        if pod.capture_inbound and cookie in _node_netns_cookies():
            raise EnrollmentError(
                f"pod {pod.name}: {ns} is the node's own network namespace (a hostNetwork "
                "pod?): inbound capture takes every connection into the netns it is "
                "linked to, the node's included; such pods cannot be enrolled"
            )
        config = pod_config(pod, cookie)
        link = self.pins.inbound_link(cgroup_id)
        what = f"inbound capture of pod {pod.name} ({ns})"
        with self._lock:
            before = self._maps.pods.get(cgroup_id)
            prog_fd: int | None = None
            try:
                # The pod's program first: if it cannot be made, nothing has changed
                # (no pod captured outbound but not inbound).
                if pod.capture_inbound and not link.exists():
                    prog_fd = self._inbound.instance(
                        cgroup_id, _map_fds(self._maps, self._inbound), what)
                self._maps.pods.put(cgroup_id, config, pod.name)
                if not pod.capture_inbound:
                    attachments.detach_pinned(link, what)
                elif prog_fd is not None:
                    libbpf.close(attachments.attach_netns(
                        link, prog_fd, ns, SK_LOOKUP.attach_type, what))
            except (BpfSyscallError, EnrollmentError) as exc:
                if before is None:  # a new enrollment: undo it whole
                    self._maps.pods.remove(cgroup_id, pod.name)
                if isinstance(exc, EnrollmentError):
                    raise
                raise EnrollmentError(f"pod {pod.name}: {exc}") from exc
            finally:
                if prog_fd is not None:
                    libbpf.close(prog_fd)
        log.info("pod enrolled", pod=pod.name, cgroup_id=cgroup_id, netns=str(ns),
                 ips=list(pod.ips))

    def unenroll(self, pod: EnrolledPod) -> None:
        """Stop capturing: new connections go direct at once; the app keeps running.
        Works for a pod already deleted (its cgroup id must then be given). The link
        goes first: a netns still linked but without its pod record drops inbound."""
        cgroup_id = pod.resolved_cgroup_id()
        with self._lock:
            attachments.detach_pinned(self.pins.inbound_link(cgroup_id),
                                      f"inbound capture of pod {pod.name}")
            self._maps.pods.remove(cgroup_id, pod.name)
        log.info("pod unenrolled", pod=pod.name, cgroup_id=cgroup_id)

    def is_enrolled(self, pod: EnrolledPod) -> bool:
        return self._maps.pods.get(pod.resolved_cgroup_id()) is not None

    # ---- proxy side --------------------------------------------------------------
    def register_inbound_listener(self, netns: str | Path, sock: socket.socket) -> None:
        """Make `sock` (a listening TCP socket opened inside the pod's netns) the target
        of the pod's inbound capture. Registering again replaces the previous socket:
        a new proxy registers before the old one closes, so inbound never lapses."""
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, C.SO_ACCEPTCONN
        ):
            raise ListenerError(
                f"inbound listener for {netns}: socket is not a listening TCP socket"
            )
        sock_cookie = socket_netns_cookie(sock)
        want = netns_cookie(netns_path(netns))
        if sock_cookie != want:
            raise ListenerError(
                f"inbound listener for {netns}: the socket lives in another network "
                "namespace; open it inside the pod's netns (setns) before listen()"
            )
        families = [C.AF_INET]
        if sock.family == socket.AF_INET6:
            v6only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            families = [C.AF_INET6] if v6only else [C.AF_INET, C.AF_INET6]
        for family in families:
            self._maps.listeners.put(
                want, family, sock.fileno(), f"inbound listener of netns {netns}"
            )
        log.info("inbound listener registered", netns=str(netns), families=families)

    def unregister_inbound_listener(self, netns: str | Path) -> None:
        cookie = netns_cookie(netns_path(netns))
        for family in (C.AF_INET, C.AF_INET6):
            self._maps.listeners.remove(cookie, family)

    def original_destination(self, sock: socket.socket) -> tuple[str, int]:
        """Where the client of an accepted socket meant to connect: exact for outbound
        captures (capture record), and getsockname() for inbound ones."""
        return self._origins.of(sock)

    def inbound_drops(self) -> dict[str, int]:
        """Connections inbound capture dropped (fail closed), by reason, since the maps
        were created: the agent exports them as ambient_inbound_capture_drops_total."""
        return self._inbound.drops()

    # ---- lifecycle ---------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What `ambientctl status` shows for a node's data path."""
        programs = []
        healthy = True
        for spec in PROGRAMS:
            entry: dict[str, Any] = {"name": spec.name, "attach_type": spec.attach_type}
            fd = self._prog_fds.get(spec.name)
            entry["id"] = libbpf.prog_info(fd).id if fd is not None else None
            if not spec.per_netns:
                entry.update(self._link_status(self.pins.link(spec.name)))
                healthy = healthy and bool(entry.get("attached"))
                if entry.get("prog_id") != entry["id"]:
                    healthy = False
            programs.append(entry)
        inbound_links = [self._link_status(p) for p in self.pins.inbound_links()]
        return {
            "pin_name": self.pins.name,
            "pin_dir": str(self.pins.dir),
            "healthy": healthy,
            "programs": programs,
            "attach_cgroup_id": next(
                (p["target"] for p in programs if p.get("target")), None
            ),
            "enrolled_pods": self._maps.pods.count(),
            "inbound_drops": self.inbound_drops(),
            "inbound_links": len(inbound_links),
            "inbound_links_attached": sum(1 for x in inbound_links if x["attached"]),
            "inbound_listeners": self._maps.listeners.count(),
            "maps": {m.spec.name: m.id for m in (
                self._maps.pods, self._maps.original,
                self._maps.capture_cookies, self._maps.listeners,
                self._inbound.templates, self._inbound.drops_map)},
            "pins": [str(p) for p in self.pins.all_pins()],
        }

    @staticmethod
    def _link_status(pin: Path) -> dict[str, Any]:
        if not pin.exists():
            return {"attached": False, "link_id": None}
        fd = libbpf.obj_get(str(pin))
        try:
            info = libbpf.link_info(fd)
        finally:
            libbpf.close(fd)
        return {"attached": info.target != 0, "link_id": info.id, "prog_id": info.prog_id,
                "target": info.target}

    def close(self) -> None:
        """Drop this process's handles; the pinned programs keep capturing."""
        self._maps.close()
        self._inbound.close()
        if self._loaded is not None:
            self._loaded.close()
        else:
            for fd in self._prog_fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._prog_fds = {}

    def uninstall(self) -> None:
        """Detach every program (cgroup and every pod netns) and remove every pin."""
        for link in self.pins.inbound_links():
            attachments.detach_pinned(link, link.name)
        for spec in reversed(CGROUP_PROGRAMS):
            attachments.detach_pinned(self.pins.link(spec.name), spec.name)
        self.close()
        self.pins.remove_all()
        log.info("redirection uninstalled", pin=self.pins.name)

    def _prog(self, name: str) -> int:
        fd = self._prog_fds.get(name)
        if fd is None:
            raise NotInstalled(str(self.pins.dir))
        return fd

    def __enter__(self) -> Redirector:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _opened(maps: MapSet, inbound: InboundCapture) -> list[Any]:
    return [maps.pods, maps.original, maps.capture_cookies,
            maps.listeners, inbound.templates, inbound.drops_map]


def _node_netns_cookies() -> set[int]:
    """The netns of this process (the agent: the host's, or hostNetwork) and of PID 1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        cookies = {socket_netns_cookie(sock)}
    with contextlib.suppress(Exception):  # no hostPID: PID 1 is the container's own
        cookies.add(netns_cookie(Path("/proc/1/ns/net")))
    return cookies


def _map_fds(maps: MapSet, inbound: InboundCapture) -> dict[str, int]:
    return {m.spec.name: m.fd for m in _opened(maps, inbound)}


def uninstall(pin_name: str) -> bool:
    """Remove an installation whether or not an agent runs; False if none was there."""
    pins = PinLayout(pin_name)
    if not pins.dir.exists():
        return False
    try:
        redirector = Redirector.open(pin_name)
    except Exception as exc:  # half-made installation: detach what links exist, unpin all
        log.warning("partial installation, removing pins", pin=pin_name, error=str(exc))
        for link in pins.inbound_links():
            attachments.detach_pinned(link, link.name)
        for spec in CGROUP_PROGRAMS:
            attachments.detach_pinned(pins.link(spec.name), spec.name)
        pins.remove_all()
        return True
    redirector.uninstall()
    return True

"""Netlink plumbing for local nodes and pods, through pyroute2.

pyroute2 is imported where a netlink socket is opened, not with this module: it costs
~10 MB of resident memory (it loads sqlite3, multiprocessing, unittest ...) in every
process that imports the runtime, most of which never build a node or pod.

Every link lives inside a namespace the runtime created (fabric, node or pod), so the
host's own interface list never changes and deleting the namespaces removes them all.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from mesh.runtime.errors import CommandFailed
from mesh.runtime.netns import NETNS_RUN_DIR, in_netns, write_sysctl

if TYPE_CHECKING:
    from pyroute2 import IPRoute

IFA_F_NODAD = 0x02


def run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr)
    return proc.stdout


def short_ifname(prefix: str, key: str) -> str:
    """Interface names are limited to 15 bytes: a prefix plus a stable hash."""
    return prefix + hashlib.sha256(key.encode()).hexdigest()[: 15 - len(prefix)]


@contextmanager
def netlink(netns: str) -> Iterator[IPRoute]:
    """A netlink socket bound to `netns` (created while inside it)."""
    from pyroute2 import IPRoute

    with in_netns(netns):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def create_netns(name: str, forwarding: bool) -> None:
    """A fresh namespace with loopback up and IPv6 duplicate detection off (no waits)."""
    if not (NETNS_RUN_DIR / name).exists():
        run(["ip", "netns", "add", name])
    for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
        write_sysctl(name, key, "0")
    if forwarding:
        write_sysctl(name, "net.ipv4.ip_forward", "1")
        write_sysctl(name, "net.ipv6.conf.all.forwarding", "1")
    with netlink(name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def delete_netns(name: str) -> None:
    with contextlib.suppress(CommandFailed):
        for pid in run(["ip", "netns", "pids", name]).split():
            with contextlib.suppress(CommandFailed):
                run(["kill", "-9", pid])
    with contextlib.suppress(CommandFailed):
        run(["ip", "netns", "delete", name])


def list_netns(prefix: str) -> list[str]:
    if not NETNS_RUN_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_RUN_DIR.iterdir() if p.name.startswith(prefix))


def add_address(
    ipr: IPRoute, ifname: str, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
) -> None:
    index = ipr.link_lookup(ifname=ifname)[0]
    flags = IFA_F_NODAD if address.version == 6 else 0
    ipr.addr(
        "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen,
        flags=flags,
    )


def veth_into(
    here: str, here_name: str, there: str, there_name: str
) -> None:
    """A veth pair with one end in `here` and the other moved into `there`, both up."""
    with netlink(here) as ipr:
        if not ipr.link_lookup(ifname=here_name):
            ipr.link(
                "add", ifname=here_name, kind="veth",
                peer={"ifname": there_name, "net_ns_fd": there},
            )
        ipr.link("set", index=ipr.link_lookup(ifname=here_name)[0], state="up")
    with netlink(there) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=there_name)[0], state="up")


def ensure_bridge(netns: str, name: str) -> None:
    with netlink(netns) as ipr:
        if not ipr.link_lookup(ifname=name):
            ipr.link("add", ifname=name, kind="bridge")
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")


def enslave(netns: str, ifname: str, bridge: str) -> None:
    with netlink(netns) as ipr:
        master = ipr.link_lookup(ifname=bridge)[0]
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], master=master)


def add_route(netns: str, dst: str, gateway: str) -> None:
    with netlink(netns) as ipr:
        family = 10 if ":" in gateway else 2
        ipr.route("replace", dst=dst, gateway=gateway, family=family)

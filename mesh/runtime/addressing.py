"""Address plan of a local cluster: one /24 (and /64) of pod addresses per node.

Node i (1..250) owns pods 10.100.i.0/24 and fd00:100:i::/64, reaches the fabric over
10.99.i.0/24 and fd00:99:i::/64. The plan is fixed so that addresses read the same
in every local cluster, and nothing here touches the host's own networks.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

MAX_NODES = 250
MAX_PODS_PER_NODE = 250


@dataclass(frozen=True)
class NodeAddressing:
    index: int

    @property
    def pod_cidr(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.100.{self.index}.0/24")

    @property
    def pod_cidr6(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network(f"fd00:100:{self.index:x}::/64")

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.pod_cidr.network_address + 1

    @property
    def gateway6(self) -> ipaddress.IPv6Address:
        return self.pod_cidr6.network_address + 1

    @property
    def fabric_side(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv6Address]:
        """The fabric router's end of this node's uplink."""
        return (
            ipaddress.IPv4Address(f"10.99.{self.index}.1"),
            ipaddress.IPv6Address(f"fd00:99:{self.index:x}::1"),
        )

    @property
    def node_side(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv6Address]:
        """The node's end of its uplink: its 'host IP' in Kubernetes terms."""
        return (
            ipaddress.IPv4Address(f"10.99.{self.index}.2"),
            ipaddress.IPv6Address(f"fd00:99:{self.index:x}::2"),
        )

    def pod_address(self, host: int) -> tuple[ipaddress.IPv4Address, ipaddress.IPv6Address]:
        """Pod number `host` (2..251) on this node, v4 and v6 with the same host part."""
        return self.pod_cidr.network_address + host, self.pod_cidr6.network_address + host

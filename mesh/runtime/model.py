"""What the local runtime hands out: plain records of nodes and pods."""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mesh.runtime.netns import netns_path


@dataclass(frozen=True)
class Node:
    name: str
    index: int
    netns: str
    pod_cidr: ipaddress.IPv4Network
    pod_cidr6: ipaddress.IPv6Network
    gateway: ipaddress.IPv4Address
    gateway6: ipaddress.IPv6Address
    host_ip: ipaddress.IPv4Address
    cgroup_path: Path

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if not isinstance(v, int) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Node:
        return cls(
            name=data["name"],
            index=int(data["index"]),
            netns=data["netns"],
            pod_cidr=ipaddress.IPv4Network(data["pod_cidr"]),
            pod_cidr6=ipaddress.IPv6Network(data["pod_cidr6"]),
            gateway=ipaddress.IPv4Address(data["gateway"]),
            gateway6=ipaddress.IPv6Address(data["gateway6"]),
            host_ip=ipaddress.IPv4Address(data["host_ip"]),
            cgroup_path=Path(data["cgroup_path"]),
        )


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    node: str
    netns: str
    ip: ipaddress.IPv4Address
    ip6: ipaddress.IPv6Address
    host: int
    cgroup_path: Path
    cgroup_id: int

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def netns_path(self) -> Path:
        return netns_path(self.netns)

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if not isinstance(v, int) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pod:
        return cls(
            namespace=data["namespace"],
            name=data["name"],
            node=data["node"],
            netns=data["netns"],
            ip=ipaddress.IPv4Address(data["ip"]),
            ip6=ipaddress.IPv6Address(data["ip6"]),
            host=int(data["host"]),
            cgroup_path=Path(data["cgroup_path"]),
            cgroup_id=int(data["cgroup_id"]),
        )

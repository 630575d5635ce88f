"""Everything a local mesh leaves on the machine, looked up from scratch: what `down`
must remove and what the tests check it removed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ambientctl.layout import MeshLayout
from ambientctl.processes import stray_processes
from mesh.runtime.cgroups import cgroup2_root
from mesh.runtime.errors import CgroupV2Missing
from mesh.runtime.local import BPF_PIN_ROOT, ETC_NETNS
from mesh.runtime.netns import NETNS_RUN_DIR


@dataclass
class Traces:
    processes: list[int] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    etc_netns: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    pins: list[str] = field(default_factory=list)
    state: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not any(self.as_dict().values())

    def as_dict(self) -> dict[str, list[str]]:
        return {"processes": [str(p) for p in self.processes], "netns": self.netns,
                "etc_netns": self.etc_netns, "cgroups": self.cgroups, "pins": self.pins,
                "state": self.state}


def _prefixed(directory: Path, prefix: str) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(str(p) for p in directory.iterdir() if p.name.startswith(prefix))


def find(layout: MeshLayout) -> Traces:
    prefix = f"{layout.cluster}-"
    try:
        cg = cgroup2_root() / layout.cluster
        cgroups = [str(cg)] if cg.exists() else []
    except CgroupV2Missing:
        cgroups = []
    return Traces(
        processes=stray_processes(f"{layout.base}/"),
        netns=[Path(p).name for p in _prefixed(NETNS_RUN_DIR, prefix)],
        etc_netns=_prefixed(ETC_NETNS, prefix),
        cgroups=cgroups,
        pins=_prefixed(BPF_PIN_ROOT, prefix),
        state=[str(layout.base)] if layout.base.exists() else [],
    )

"""Where an installation lives on bpffs: /sys/fs/bpf/ambientmesh/<pin-name>/.

  maps/<map>               the state (pods, addresses, original destinations, listeners)
  progs/<program>          the code currently attached
  links/<program>          cgroup links (connect4, connect6, sockops, getpeername4/6)
  links/inbound-<cgroup>   one sk_lookup link per enrolled pod netns

Pins, not processes, own the attachments: an agent may die and the next one adopts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ebpf import constants as C
from ebpf.errors import BpffsNotMounted, EbpfError

_PIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
INBOUND_LINK_PREFIX = "inbound-"
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def is_bpffs(path: Path) -> bool:
    try:
        return _statfs_type(path) == C.BPF_FS_MAGIC
    except OSError:
        return False


def _statfs_type(path: Path) -> int:
    """f_type, the first field of struct statfs, says which filesystem this is."""
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(str(path).encode(), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return int.from_bytes(buf.raw[:8], "little")


def require_bpffs(root: Path = C.BPFFS_ROOT) -> None:
    if not is_bpffs(root):
        raise BpffsNotMounted(str(root))


def is_cgroup2(path: Path) -> bool:
    try:
        return _statfs_type(path) == C.CGROUP2_SUPER_MAGIC
    except OSError:
        return False


@dataclass(frozen=True)
class PinLayout:
    name: str
    root: Path = C.PIN_ROOT

    def __post_init__(self) -> None:
        if not _PIN_NAME.match(self.name):
            raise EbpfError(
                f"invalid pin name {self.name!r}: use letters, digits, '_' or '-' "
                "(bpffs refuses dots), e.g. <cluster>-<node>"
            )

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def maps(self) -> Path:
        return self.dir / "maps"

    @property
    def progs(self) -> Path:
        return self.dir / "progs"

    @property
    def links(self) -> Path:
        return self.dir / "links"

    def map(self, name: str) -> Path:
        return self.maps / name

    def prog(self, name: str) -> Path:
        return self.progs / name

    def link(self, name: str) -> Path:
        return self.links / name

    def inbound_link(self, cgroup_id: int) -> Path:
        return self.links / f"{INBOUND_LINK_PREFIX}{cgroup_id}"

    def inbound_links(self) -> list[Path]:
        if not self.links.is_dir():
            return []
        return sorted(self.links.glob(f"{INBOUND_LINK_PREFIX}*"))

    def exists(self) -> bool:
        return self.maps.is_dir() and any(self.maps.iterdir())

    def create(self) -> None:
        require_bpffs(self.root.parent)
        # 0700 all the way down: the pinned maps steer and record every pod's traffic;
        # only root (the agent) may open them, not even list them.
        for d in (self.root, self.dir, self.maps, self.progs, self.links):
            d.mkdir(mode=0o700, exist_ok=True)
            d.chmod(0o700)

    def all_pins(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.rglob("*") if p.is_file())

    def remove_all(self) -> None:
        """Unlink every pin and directory (objects die with their last reference)."""
        for pin in self.all_pins():
            pin.unlink(missing_ok=True)
        for d in (self.maps, self.progs, self.links, self.dir):
            if d.is_dir():
                d.rmdir()


def installed_pin_names(root: Path = C.PIN_ROOT) -> list[str]:
    """Every installation on this host (several local nodes may share one kernel)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir())

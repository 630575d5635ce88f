"""Errors of the local runtime, each telling the user what to do about it."""

from __future__ import annotations


class RuntimeError_(Exception):
    """Base class: something about local nodes or pods went wrong."""


class NotRootError(RuntimeError_):
    def __init__(self) -> None:
        super().__init__(
            "the local runtime creates network namespaces and cgroups, which needs root: "
            "run this command with sudo"
        )


class CgroupV2Missing(RuntimeError_):
    def __init__(self) -> None:
        super().__init__(
            "no cgroup v2 hierarchy found at /sys/fs/cgroup or /sys/fs/cgroup/unified: "
            "boot with systemd.unified_cgroup_hierarchy=1, or mount one with "
            "`mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified`"
        )


class NodeNotFound(RuntimeError_):
    def __init__(self, node: str) -> None:
        super().__init__(f"node {node!r} does not exist in this local cluster")
        self.node = node


class PodNotFound(RuntimeError_):
    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f"pod {namespace}/{name} does not exist in this local cluster")
        self.namespace = namespace
        self.name = name


class AddressExhausted(RuntimeError_):
    def __init__(self, what: str) -> None:
        super().__init__(f"no free address left for {what}: delete unused pods or nodes")


class CommandFailed(RuntimeError_):
    def __init__(self, argv: list[str], code: int, stderr: str) -> None:
        super().__init__(f"`{' '.join(argv)}` failed with exit code {code}: {stderr.strip()}")
        self.argv = argv
        self.code = code


class BuildFailed(RuntimeError_):
    def __init__(self, what: str, code: int, stderr: str) -> None:
        super().__init__(f"building {what} in a child process failed (exit code {code}): "
                         f"{stderr.strip()[-2000:]}")
        self.code = code

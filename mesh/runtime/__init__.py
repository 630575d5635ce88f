"""The local runtime: builds nodes and pods out of network namespaces, veths,
bridges and cgroup v2 directories, and runs processes inside pods.

Shared by the node agent (as kubelet + CNI in local mode), `ambientctl up` and the
tests. Every object it creates carries the cluster prefix so teardown can find them
all, even after a crash. It knows nothing of the mesh: no eBPF, no proxies.
"""

from mesh.runtime.errors import NodeNotFound, PodNotFound, RuntimeError_
from mesh.runtime.local import LocalRuntime
from mesh.runtime.model import Node, Pod

__all__ = ["LocalRuntime", "Node", "NodeNotFound", "Pod", "PodNotFound", "RuntimeError_"]

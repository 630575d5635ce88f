"""Fixtures of the node agent's Kubernetes-mode netns tests (tests/netns/kubelet.py):
a kubelet on node n1 whose pods are removed whole at teardown, and the fake API
server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from mesh.runtime import LocalRuntime
from mesh.runtime import cgroups as cg
from tests.fakes.kube_apiserver import FakeApiServer
from tests.netns.kubelet import Kubelet


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def kubelet(runtime: LocalRuntime, cluster_name: str) -> Iterator[Kubelet]:
    runtime.create_node("n1")
    kubepods = cg.cgroup2_root() / f"{cluster_name}-kubepods"
    kubepods.mkdir()
    k = Kubelet(runtime, kubepods)
    try:
        yield k
    finally:
        k.stop_all()


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    s = FakeApiServer(bookmark_interval=0.2)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()

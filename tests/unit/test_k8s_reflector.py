"""The reflector with the real kubernetes_asyncio client against the fake API server
(real HTTP on loopback): paginated list, watch, bookmarks, reconnect, 410 relist."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from mesh.backoff import Backoff
from mesh.kube.kinds import PODS, WatchedKind
from mesh.kube.reflector import Reflector
from tests.fakes.kube_apiserver import FakeApiServer
from tests.fakes.kube_client import api_client

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    s = FakeApiServer(bookmark_interval=0.1)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def pod(name: str, node: str = "n1", ns: str = "default") -> dict[str, object]:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}}


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class Running:
    def __init__(self, server: FakeApiServer, kind: WatchedKind = PODS, **kw: object) -> None:
        self.api = api_client(server)
        self.changes = 0
        self.reflector = Reflector(kind, self.api, self._changed,
                                   backoff=Backoff(initial=0.05, maximum=0.2), **kw)  # type: ignore[arg-type]

    def _changed(self) -> None:
        self.changes += 1

    def names(self) -> list[str]:
        return [o["metadata"]["name"] for o in self.reflector.cache.items()]

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.reflector.run())
        await asyncio.wait_for(self.reflector.synced.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task
        await self.api.close()


def lists(server: FakeApiServer) -> list[dict[str, str]]:
    return [q for m, p, q in server.requests if m == "GET" and p == "/api/v1/pods"
            and q.get("watch", "").lower() != "true"]


def watches(server: FakeApiServer) -> list[dict[str, str]]:
    return [q for m, p, q in server.requests if m == "GET" and p == "/api/v1/pods"
            and q.get("watch", "").lower() == "true"]


async def test_paginated_list_then_watch_sees_every_change(server: FakeApiServer) -> None:
    for i in range(7):
        server.create(pod(f"p{i}"))
    async with Running(server, page_size=3) as r:
        assert r.names() == [f"p{i}" for i in range(7)]
        assert len(lists(server)) == 3  # 3 + 3 + 1, each page with limit=3
        assert all(q["limit"] == "3" for q in lists(server))
        listed_rv = r.reflector.cache.resource_version
        await until(lambda: server.watch_count("Pod") == 1)
        assert watches(server)[0]["resourceVersion"] == listed_rv
        assert watches(server)[0]["allowWatchBookmarks"].lower() == "true"
        server.create(pod("new"))
        server.delete("Pod", "default", "p0")
        changed = dict(server.get("Pod", "default", "p1") or {})
        changed["metadata"] = {**changed["metadata"], "labels": {"v": "2"}}
        server.update(changed)
        await until(lambda: "new" in r.names() and "p0" not in r.names() and
                    (r.reflector.cache.objects[("default", "p1")]["metadata"]
                     .get("labels") == {"v": "2"}))
        obj = r.reflector.cache.objects[("default", "new")]
        assert obj["kind"] == "Pod" and obj["apiVersion"] == "v1"


async def test_bookmarks_advance_the_resource_version(server: FakeApiServer) -> None:
    server.create(pod("a"))
    async with Running(server) as r:
        start = int(r.reflector.cache.resource_version)
        server.create({"kind": "Service", "metadata": {"name": "s"},
                       "spec": {"ports": [{"port": 1}]}})  # other kinds move the version too
        await until(lambda: int(r.reflector.cache.resource_version) > start)
        assert r.names() == ["a"]


async def test_dropped_watch_resumes_from_last_version_without_relisting(
        server: FakeApiServer) -> None:
    server.create(pod("a"))
    async with Running(server) as r:
        await until(lambda: server.watch_count("Pod") == 1)
        server.break_watches()
        server.create(pod("b"))  # happens while no watch is open
        await until(lambda: r.names() == ["a", "b"])
        assert len(lists(server)) == 1
        assert len(watches(server)) >= 2


async def test_410_on_open_watch_relists_without_losing_or_duplicating(
        server: FakeApiServer) -> None:
    for name in ("a", "b", "c"):
        server.create(pod(name))
    async with Running(server) as r:
        await until(lambda: server.watch_count("Pod") == 1)
        server.break_watches()
        # While disconnected: changes, then the history is compacted away.
        server.delete("Pod", "default", "a")
        server.create(pod("d"))
        server.expire_watches()
        await until(lambda: len(lists(server)) == 2)
        await until(lambda: r.names() == ["b", "c", "d"])
        assert r.reflector.cache.relists == 1
        assert len(r.reflector.cache.objects) == 3
        server.create(pod("e"))  # and the new watch works
        await until(lambda: r.names() == ["b", "c", "d", "e"])


async def test_410_sent_in_the_stream_relists(server: FakeApiServer) -> None:
    server.create(pod("a"))
    async with Running(server) as r:
        await until(lambda: server.watch_count("Pod") == 1)
        server.create(pod("b"))
        await until(lambda: r.names() == ["a", "b"])
        server.expire_watches()
        await until(lambda: len(lists(server)) == 2)
        assert r.names() == ["a", "b"] and r.reflector.cache.relists == 1


async def test_field_selector_limits_to_one_node(server: FakeApiServer) -> None:
    server.create(pod("here", node="n1"))
    server.create(pod("there", node="n2"))
    async with Running(server, field_selector="spec.nodeName=n1") as r:
        assert r.names() == ["here"]
        await until(lambda: server.watch_count("Pod") == 1)
        server.create(pod("later-there", node="n2"))
        server.create(pod("later-here", node="n1"))
        await until(lambda: "later-here" in r.names())
        assert "later-there" not in r.names()


async def test_missing_crd_is_retried_until_it_appears(server: FakeApiServer) -> None:
    kind = WatchedKind("Widget", "example.com", "v1", "widgets", optional=True)
    api = api_client(server)
    reflector = Reflector(kind, api, lambda: None, backoff=Backoff(initial=0.05, maximum=0.1))
    task = asyncio.create_task(reflector.run())
    try:
        await until(lambda: "not served (404)" in reflector.last_error)
        assert "install its CRD" in reflector.last_error
        assert not reflector.synced.is_set()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await api.close()

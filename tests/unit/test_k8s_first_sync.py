"""No snapshot from half a cluster: the controller's first registry sync waits until
every kind is listed or known not to be installed (404). A kind that cannot be listed
(403 from RBAC, 500, a slow server) holds the first sync back however long it lasts,
since a snapshot without AuthorizationPolicies would read as "allow all" to proxies.
Real kubernetes_asyncio client against the fake API server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from controller.kube.source import KubeSource
from controller.registry import Registry
from mesh.config import AuthorizationPolicy
from tests.fakes.kube_apiserver import FakeApiServer, status
from tests.fakes.kube_client import api_client

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RefusingApiServer(FakeApiServer):
    """Answers lists of the named resources with what a real API server sends when
    RBAC forbids them, or when their CRD is not installed."""

    def __init__(self) -> None:
        super().__init__(bookmark_interval=0.2)
        self.forbidden: set[str] = set()
        self.not_installed: set[str] = set()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        plural = next((p for p in self.forbidden | self.not_installed
                       if f"/{p}" in request.path), None)
        if plural in self.forbidden:
            return status(403, "Forbidden", f'{plural}.ambientmesh.io is forbidden: User '
                          '"system:serviceaccount:ambient-system:ambient-controller" cannot '
                          f'list resource "{plural}" in API group "ambientmesh.io" at the '
                          'cluster scope')
        if plural in self.not_installed:
            return status(404, "NotFound", "the server could not find the requested resource")
        return await super()._dispatch(request)


POLICY = {"kind": "AuthorizationPolicy", "apiVersion": "ambientmesh.io/v1alpha1",
          "metadata": {"name": "only-frontend", "namespace": "demo"},
          "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {
              "principals": ["cluster.local/ns/demo/sa/frontend"]}}]}]}}


@pytest.fixture
async def server() -> AsyncIterator[RefusingApiServer]:
    s = RefusingApiServer()
    await s.start()
    s.create({"kind": "Namespace", "metadata": {"name": "demo"}})
    s.create(POLICY)
    try:
        yield s
    finally:
        await s.stop()


def policies(registry: Registry) -> list[str]:
    return [o.name for o in registry.objects() if isinstance(o, AuthorizationPolicy)]


async def test_a_kind_that_cannot_be_listed_holds_the_first_sync_back(
        server: RefusingApiServer) -> None:
    server.forbidden.add("authorizationpolicies")
    api = api_client(server)
    registry = Registry()
    source = KubeSource(api, registry, debounce=0.01)
    for r in source.reflectors.values():
        r._backoff.initial, r._backoff.maximum = 0.05, 0.1
    task = asyncio.create_task(source.run())
    try:
        synced = asyncio.create_task(source.wait_synced(report_every=0.2))
        await asyncio.sleep(6)  # longer than the 5 s grace optional kinds once had
        assert not synced.done(), "synced while AuthorizationPolicies could not be listed"
        assert policies(registry) == []
        assert "403" in source.reflectors["AuthorizationPolicy"].last_error
        server.forbidden.clear()  # RBAC fixed: the policy is listed, then the first sync
        await asyncio.wait_for(synced, 10)
        assert policies(registry) == ["only-frontend"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()


async def test_a_kind_whose_crd_is_not_installed_does_not_hold_it_back(
        server: RefusingApiServer) -> None:
    server.not_installed.update({"trafficpolicies", "httproutes"})
    api = api_client(server)
    registry = Registry()
    source = KubeSource(api, registry, debounce=0.01)
    task = asyncio.create_task(source.run())
    try:
        await asyncio.wait_for(source.wait_synced(report_every=0.2), 10)
        assert policies(registry) == ["only-frontend"]
        assert source.reflectors["TrafficPolicy"].not_served.is_set()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()

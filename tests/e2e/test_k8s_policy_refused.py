"""Kubernetes mode, end to end (fake API server that prunes and validates with the
CRDs as a real one does, the real controller, a real node-agent subscription): a typo
in an AuthorizationPolicy never widens what the node proxy enforces (issue 20,
finding 2). The typo'd update is refused whole and the pushed snapshot keeps the old
rules; pruned by an older CRD into `source: {}`, a new policy is pushed as a stand-in
that allows nothing, never as a rule matching any peer; the shipped CRD refuses
`source: {}` at admission. Refusals show in logs, /v1/status and the metrics."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio.client.exceptions import ApiException

from controller.app import Controller
from mesh.api import config_pb2 as pb
from mesh.config import ObjectKey
from mesh.xds import Backoff, ConfigSubscriber
from tests.e2e.test_k8s_controller import kube_controller, nodeagent_token, populate, until
from tests.fakes.crd_schema import legacy_crd
from tests.fakes.kube_apiserver import FakeApiServer
from tests.fakes.kube_client import api_client
from tests.grpc_loop import quiet_stale_grpc_callbacks  # noqa: F401 (autouse)

pytestmark = pytest.mark.anyio
GROUP, VERSION, PLURAL = "ambientmesh.io", "v1alpha1", "authorizationpolicies"
MERGE = "application/merge-patch+json"  # a dict body is sent as JSON patch otherwise
SLEEP = "cluster.local/ns/demo/sa/sleep"
KEY = ObjectKey("AuthorizationPolicy", "demo", "web-from-sleep")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def policy(source: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AuthorizationPolicy",
            "metadata": {"name": "web-from-sleep", "namespace": "demo"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW",
                     "rules": [{"from": [{"source": source}],
                                "to": [{"operation": {"ports": [8080]}}]}]}}


GOOD, TYPO = policy({"principals": [SLEEP]}), policy({"principal": [SLEEP]})


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    s = FakeApiServer(bookmark_interval=0.2)
    await s.start()
    populate(s)
    try:
        yield s
    finally:
        await s.stop()


@contextlib.asynccontextmanager
async def node_subscription(c: Controller, server: FakeApiServer
                            ) -> AsyncIterator[ConfigSubscriber]:
    token = nodeagent_token(server, "ambient-nodeagent-a", "sa-token-n1")
    sub = ConfigSubscriber(f"127.0.0.1:{c.grpc_port}", kind=pb.NODE, name="n1", node="n1",
                           token=token, apply=lambda s: None,
                           backoff=Backoff(initial=0.05, maximum=0.2))
    async with anyio.create_task_group() as tg:
        tg.start_soon(sub.run)
        try:
            yield sub
        finally:
            tg.cancel_scope.cancel()


def pushed(snap: pb.Snapshot) -> pb.Authorization | None:
    return next((a for a in snap.authorizations if (a.namespace, a.name) == (
        "demo", "web-from-sleep")), None)


def principals(a: pb.Authorization | None) -> list[list[str]]:
    assert a is not None
    return [list(s.principals) for r in a.rules for s in r.sources]


async def objects_api(server: FakeApiServer) -> tuple[kclient.ApiClient, Any]:
    api = api_client(server)
    return api, kclient.CustomObjectsApi(api)


async def status(c: Controller) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{c.admin_port}", timeout=10,
                                 headers={"Authorization": f"Bearer {c.admin_token}"}) as h:
        body: dict[str, Any] = (await h.get("/v1/status")).json()
        return body


def accepted(server: FakeApiServer) -> dict[str, Any]:
    """The Accepted condition the controller wrote on the stored object ({} if none)."""
    obj = server.get("AuthorizationPolicy", "demo", "web-from-sleep") or {}
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c["type"] == "Accepted"), {})


def refused_count(c: Controller) -> float:
    value: float = c.metrics.config_rejected.labels("kubernetes")._value.get()
    return value


async def test_a_typo_is_refused_and_the_old_rules_stay_in_force(
        server: FakeApiServer, tmp_path: Path) -> None:
    api, objects = await objects_api(server)
    try:
        await objects.create_namespaced_custom_object(GROUP, VERSION, "demo", PLURAL, GOOD)
        async with kube_controller(server, tmp_path / "c") as (c, source), \
                node_subscription(c, server) as sub:
            first = await sub.wait_for(lambda s: pushed(s) is not None, timeout=10)
            assert principals(pushed(first)) == [[SLEEP]]

            # kubectl apply of the typo: the CRD keeps the unknown field, the controller
            # refuses the whole object.
            await objects.replace_namespaced_custom_object(
                GROUP, VERSION, "demo", PLURAL, "web-from-sleep",
                {**TYPO, "metadata": server.get("AuthorizationPolicy", "demo",
                                                "web-from-sleep")["metadata"]})  # type: ignore[index]
            await until(lambda: KEY in source.rejected)
            assert source.rejected[KEY] == (
                "AuthorizationPolicy demo/web-from-sleep: "
                "spec.rules[0].from[0].source.principal: unknown field")
            assert refused_count(c) == 1
            # Something else changes: a new snapshot is pushed, with the old rules.
            changed = server.get("Service", "demo", "external")
            assert changed is not None
            changed["spec"]["ports"] = [{"port": 5433}]
            server.update(changed)
            later = await sub.wait_for(lambda s: s.version != first.version, timeout=10)
            assert principals(pushed(later)) == [[SLEEP]]
            st = await status(c)
            assert not st["controller"]["healthy"]
            (err,) = st["controller"]["configErrors"]
            assert err["object"] == str(KEY)
            assert err["inForce"] == "its previous valid version"
            assert err["message"].startswith(source.rejected[KEY])
            # ... and on the object itself, for `kubectl get` / `kubectl describe`.
            await until(lambda: accepted(server).get("status") == "False")
            assert accepted(server)["reason"] == "Refused"
            assert accepted(server)["message"] == source.rejected[KEY]

            # Fixed: the new version is in force, the refusal is gone.
            fixed = copy.deepcopy(GOOD)
            fixed["spec"]["rules"][0]["from"][0]["source"]["principals"].append(
                "cluster.local/ns/demo/sa/web")
            await objects.patch_namespaced_custom_object(
                GROUP, VERSION, "demo", PLURAL, "web-from-sleep", fixed,
            _content_type=MERGE)
            now = await sub.wait_for(lambda s: len(principals(pushed(s))[0]) == 2, timeout=10)
            assert principals(pushed(now)) == [[SLEEP, "cluster.local/ns/demo/sa/web"]]
            assert not source.rejected
            assert (await status(c))["controller"]["configErrors"] == []
            await until(lambda: accepted(server).get("status") == "True")
    finally:
        await api.close()


async def test_a_policy_pruned_to_an_empty_source_is_pushed_as_allow_nothing(
        server: FakeApiServer, tmp_path: Path) -> None:
    # A cluster still running the older CRD: it prunes the typo into `source: {}`.
    server.install_crd(legacy_crd("AuthorizationPolicy"))
    api, objects = await objects_api(server)
    try:
        await objects.create_namespaced_custom_object(GROUP, VERSION, "demo", PLURAL, TYPO)
        stored = server.get("AuthorizationPolicy", "demo", "web-from-sleep")
        assert stored is not None
        assert stored["spec"]["rules"][0]["from"] == [{"source": {}}]
        async with kube_controller(server, tmp_path / "c") as (c, source), \
                node_subscription(c, server) as sub:
            snap = await sub.wait_for(lambda s: pushed(s) is not None, timeout=10)
            stand_in = pushed(snap)
            assert stand_in is not None
            # Not a rule whose empty source matches any peer: no rule at all, so web
            # (selected) accepts nobody until the policy is fixed.
            assert stand_in.action == pb.ALLOW
            assert list(stand_in.rules) == []
            assert dict(stand_in.selector) == {"app": "web"}
            assert source.in_force[KEY] == "an allow-nothing stand-in"
            assert source.rejected[KEY] == (
                "AuthorizationPolicy demo/web-from-sleep: spec.rules[0].from[0].source: "
                "must set at least one field (an empty source would match any peer)")
            assert refused_count(c) == 1
            await until(lambda: accepted(server).get("status") == "False")
    finally:
        await api.close()


async def test_the_shipped_crd_refuses_an_empty_source_at_admission(
        server: FakeApiServer, tmp_path: Path) -> None:
    api, objects = await objects_api(server)
    try:
        await objects.create_namespaced_custom_object(GROUP, VERSION, "demo", PLURAL, GOOD)
        emptied = policy({})
        with pytest.raises(ApiException) as e:
            await objects.patch_namespaced_custom_object(
                GROUP, VERSION, "demo", PLURAL, "web-from-sleep", emptied,
            _content_type=MERGE)
        assert e.value.status == 422
        assert "spec.rules[0].from[0].source in body should have at least 1 properties" \
            in str(e.value.body)
        async with kube_controller(server, tmp_path / "c") as (c, source), \
                node_subscription(c, server) as sub:
            snap = await sub.wait_for(lambda s: pushed(s) is not None, timeout=10)
            assert principals(pushed(snap)) == [[SLEEP]]
            assert not source.rejected
            await anyio.sleep(0.3)
            assert accepted(server) == {}  # objects never refused get no status write
    finally:
        await api.close()

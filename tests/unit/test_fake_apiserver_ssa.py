"""The fake API server's server-side apply behaves as the real one where our controller
meets it (issue 15 item 6): field ownership in managedFields, 409 conflicts with causes
unless forced, keyed list merges of ports, the `Duplicate value` 422, and removal of
fields a manager stops applying. Real kubernetes_asyncio client, real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio.client.exceptions import ApiException

from tests.fakes.kube_apiserver import FakeApiServer
from tests.fakes.kube_client import api_client

pytestmark = pytest.mark.anyio
APPLY: dict[str, Any] = {"_content_type": "application/apply-patch+yaml"}  # not in stubs


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def core() -> AsyncIterator[tuple[FakeApiServer, kclient.CoreV1Api]]:
    server = FakeApiServer()
    await server.start()
    api = api_client(server)
    try:
        yield server, kclient.CoreV1Api(api)
    finally:
        await api.close()
        await server.stop()


def svc(ports: list[dict[str, Any]], **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "wp", "namespace": "demo", "labels": labels},
            "spec": {"ports": ports}}


HBONE = {"name": "hbone", "port": 15008, "protocol": "TCP"}


async def apply(core: kclient.CoreV1Api, body: dict[str, Any], manager: str,
                force: bool = False) -> Any:
    return await core.patch_namespaced_service("wp", "demo", body, field_manager=manager,
                                               force=force, **APPLY)


async def test_another_managers_field_conflicts_unless_forced(
        core: tuple[FakeApiServer, kclient.CoreV1Api]) -> None:
    server, api = core
    await apply(api, svc([HBONE], team="a"), "alice")
    with pytest.raises(ApiException) as info:
        await apply(api, svc([HBONE], team="b"), "bob")
    assert info.value.status == 409
    body = json.loads(str(info.value.body))
    assert body["message"] == ('Apply failed with 1 conflict: conflict with "alice": '
                               ".metadata.labels.team")
    assert body["details"]["causes"] == [{"reason": "FieldManagerConflict",
                                          "message": 'conflict with "alice"',
                                          "field": ".metadata.labels.team"}]
    await apply(api, svc([HBONE], team="b"), "bob", force=True)
    stored = server.get("Service", "demo", "wp")
    assert stored is not None and stored["metadata"]["labels"]["team"] == "b"
    owners = {e["manager"]: e["fieldsV1"] for e in stored["metadata"]["managedFields"]}
    assert "f:team" in owners["bob"]["f:metadata"]["f:labels"]
    assert "f:labels" not in owners["alice"].get("f:metadata", {})  # taken away


async def test_a_rekeyed_port_makes_the_next_apply_a_duplicate_value_422(
        core: tuple[FakeApiServer, kclient.CoreV1Api]) -> None:
    """What issue 15 saw on a real API server: ports merge by port+protocol, so the
    apply adds 15008 beside the hand-edited 15009 and both are named hbone."""
    server, api = core
    await apply(api, svc([HBONE]), "ambient-controller", force=True)
    await api.patch_namespaced_service("wp", "demo", [
        {"op": "replace", "path": "/spec/ports/0/port", "value": 15009}],
        field_manager="kubectl-patch")
    with pytest.raises(ApiException) as info:
        await apply(api, svc([HBONE]), "ambient-controller", force=True)
    assert info.value.status == 422
    body = json.loads(str(info.value.body))
    assert body["message"] == ('Service "wp" is invalid: spec.ports[1].name: '
                               'Duplicate value: "hbone"')
    assert body["details"]["causes"][0]["field"] == "spec.ports[1].name"
    stored = server.get("Service", "demo", "wp")
    assert stored is not None and [p["port"] for p in stored["spec"]["ports"]] == [15009]


async def test_ports_of_two_managers_merge_by_key(
        core: tuple[FakeApiServer, kclient.CoreV1Api]) -> None:
    server, api = core
    await apply(api, svc([HBONE]), "ambient-controller")
    await apply(api, svc([{"name": "debug", "port": 9999}]), "someone")
    stored = server.get("Service", "demo", "wp")
    assert stored is not None
    assert [p["port"] for p in stored["spec"]["ports"]] == [15008, 9999]


async def test_a_field_no_longer_applied_is_removed_when_nobody_else_owns_it(
        core: tuple[FakeApiServer, kclient.CoreV1Api]) -> None:
    server, api = core
    await apply(api, svc([HBONE, {"name": "metrics", "port": 15020}], team="a"), "alice")
    await apply(api, svc([HBONE]), "alice")
    stored = server.get("Service", "demo", "wp")
    assert stored is not None
    assert [p["port"] for p in stored["spec"]["ports"]] == [15008]
    assert "team" not in (stored["metadata"].get("labels") or {})


async def test_apply_without_a_field_manager_is_refused(
        core: tuple[FakeApiServer, kclient.CoreV1Api]) -> None:
    _, api = core
    with pytest.raises(ApiException) as info:
        await api.patch_namespaced_service("wp", "demo", svc([HBONE]), **APPLY)
    assert info.value.status == 422
    assert "fieldManager: Required value" in str(info.value.body)


async def test_several_conflicts_read_as_the_real_servers(
        core: tuple[FakeApiServer, kclient.CoreV1Api]) -> None:
    """docs/kubernetes.md "e. Server-side apply": one line per field under its manager."""
    _, api = core
    await apply(api, svc([HBONE], team="a", tier="x"), "alice")
    with pytest.raises(ApiException) as info:
        await apply(api, svc([HBONE], team="b", tier="y"), "bob")
    body = json.loads(str(info.value.body))
    assert body["message"] == ('Apply failed with 2 conflicts: conflicts with "alice":\n'
                               "- .metadata.labels.team\n- .metadata.labels.tier")
    assert len(body["details"]["causes"]) == 2


async def test_a_json_patch_of_a_custom_resource_is_applied(
        core: tuple[FakeApiServer, kclient.CoreV1Api]) -> None:
    """A JSON patch array works on the real server (200); the fake applied none."""
    server, _ = core
    server.create({"apiVersion": "ambientmesh.io/v1alpha1", "kind": "AuthorizationPolicy",
                   "metadata": {"name": "ap", "namespace": "demo"},
                   "spec": {"action": "ALLOW", "rules": [{}]}})
    api = api_client(server)
    try:
        await kclient.CustomObjectsApi(api).patch_namespaced_custom_object(
            "ambientmesh.io", "v1alpha1", "demo", "authorizationpolicies", "ap",
            [{"op": "replace", "path": "/spec/action", "value": "DENY"}])
    finally:
        await api.close()
    stored = server.get("AuthorizationPolicy", "demo", "ap")
    assert stored is not None and stored["spec"]["action"] == "DENY"


async def test_a_dropped_field_takes_its_emptied_parents_with_it(
        core: tuple[FakeApiServer, kclient.CoreV1Api]) -> None:
    """Seen on the real server (docs/kubernetes.md "e."): no `selector: {}` is left."""
    server, api = core
    with_selector = svc([HBONE])
    with_selector["spec"]["selector"] = {"app": "a"}
    await apply(api, with_selector, "carol")
    await apply(api, svc([HBONE]), "carol")
    stored = server.get("Service", "demo", "wp")
    assert stored is not None and "selector" not in stored["spec"]

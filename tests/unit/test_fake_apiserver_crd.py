"""The fake API server treats custom resources as a real one does with their CRD's
structural schema: unknown fields pruned (a 400 with fieldValidation=Strict, a Warning
header with Warn), what the schema refuses answered 422 with the real Status shape.
Driven with the real kubernetes_asyncio client (and raw HTTP where headers matter)."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio.client.exceptions import ApiException

from tests.fakes.crd_schema import Refused, legacy_crd, shipped_crd
from tests.fakes.kube_apiserver import FakeApiServer
from tests.fakes.kube_client import api_client

pytestmark = pytest.mark.anyio
GROUP, VERSION, PLURAL = "ambientmesh.io", "v1alpha1", "authorizationpolicies"
MERGE = "application/merge-patch+json"  # a dict body is sent as JSON patch otherwise
PATH = f"/apis/{GROUP}/{VERSION}/namespaces/demo/{PLURAL}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def policy(source: dict[str, Any], name: str = "x") -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "demo"},
            "spec": {"action": "ALLOW", "rules": [{"from": [{"source": source}]}]}}


TYPO = {"principal": ["cluster.local/ns/demo/sa/backend"]}


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    s = FakeApiServer()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def objects(server: FakeApiServer) -> AsyncIterator[kclient.CustomObjectsApi]:
    api = api_client(server)
    try:
        yield kclient.CustomObjectsApi(api)
    finally:
        await api.close()


def stored_source(server: FakeApiServer, name: str = "x") -> Any:
    obj = server.get("AuthorizationPolicy", "demo", name)
    assert obj is not None
    return obj["spec"]["rules"][0]["from"][0]["source"]


async def test_a_legacy_schema_prunes_the_typo_to_an_empty_source(
        server: FakeApiServer, objects: kclient.CustomObjectsApi) -> None:
    server.install_crd(legacy_crd("AuthorizationPolicy"))
    await objects.create_namespaced_custom_object(GROUP, VERSION, "demo", PLURAL,
                                                  policy(TYPO))
    assert stored_source(server) == {}  # what the controller then sees
    got = await objects.get_namespaced_custom_object(GROUP, VERSION, "demo", PLURAL, "x")
    assert got["spec"]["rules"] == [{"from": [{"source": {}}]}]


async def test_warn_names_each_dropped_field_and_strict_refuses_it(
        server: FakeApiServer) -> None:
    server.install_crd(legacy_crd("AuthorizationPolicy"))
    headers = {"Authorization": f"Bearer {server.token}"}
    async with aiohttp.ClientSession(server.url, headers=headers) as http:
        async with http.post(PATH, json=policy(TYPO, "warned")) as r:
            assert r.status == 201
            assert r.headers.getall("Warning") == [
                '299 - "unknown field \\"spec.rules[0].from[0].source.principal\\""']
        async with http.post(PATH, params={"fieldValidation": "Strict"},
                             json=policy(TYPO, "strict")) as r:
            assert r.status == 400
            body = await r.json()
    assert body["reason"] == "BadRequest"
    assert body["message"] == (
        'AuthorizationPolicy in version "v1alpha1" cannot be handled as a '
        'AuthorizationPolicy: strict decoding error: unknown field '
        '"spec.rules[0].from[0].source.principal"')
    assert server.get("AuthorizationPolicy", "demo", "strict") is None


async def test_the_shipped_schema_refuses_an_empty_source_with_422(
        server: FakeApiServer, objects: kclient.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as e:
        await objects.create_namespaced_custom_object(GROUP, VERSION, "demo", PLURAL,
                                                      policy({}))
    assert e.value.status == 422
    body = json.loads(e.value.body or b"")
    detail = ("Invalid value: 0: spec.rules[0].from[0].source in body should have at least "
              "1 properties")
    assert body == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f'AuthorizationPolicy.ambientmesh.io "x" is invalid: '
                   f"spec.rules[0].from[0].source: {detail}",
        "reason": "Invalid",
        "details": {"name": "x", "group": "ambientmesh.io", "kind": "AuthorizationPolicy",
                    "causes": [{"reason": "FieldValueInvalid", "message": detail,
                                "field": "spec.rules[0].from[0].source"}]},
        "code": 422}
    assert server.get("AuthorizationPolicy", "demo", "x") is None


async def test_the_shipped_schema_keeps_the_typo_for_the_controller_to_refuse(
        server: FakeApiServer, objects: kclient.CustomObjectsApi) -> None:
    await objects.create_namespaced_custom_object(GROUP, VERSION, "demo", PLURAL,
                                                  policy(TYPO))
    assert stored_source(server) == TYPO


async def test_an_update_is_admitted_like_a_create(
        server: FakeApiServer, objects: kclient.CustomObjectsApi) -> None:
    good = policy({"principals": ["cluster.local/ns/demo/sa/backend"]})
    await objects.create_namespaced_custom_object(GROUP, VERSION, "demo", PLURAL, good)
    emptied = copy.deepcopy(good)
    emptied["spec"]["rules"][0]["from"][0]["source"] = {}
    with pytest.raises(ApiException) as e:
        await objects.patch_namespaced_custom_object(GROUP, VERSION, "demo", PLURAL, "x",
                                                     emptied,
            _content_type=MERGE)
    assert e.value.status == 422
    assert stored_source(server) == good["spec"]["rules"][0]["from"][0]["source"]
    many = copy.deepcopy(good)
    many["spec"].update(action="AUDIT", selector={})
    with pytest.raises(Refused) as refused:  # tests' own writes are admitted too
        server.update(many)
    assert refused.value.code == 422
    assert refused.value.status["message"] == (
        'AuthorizationPolicy.ambientmesh.io "x" is invalid: [spec.action: Unsupported '
        'value: "AUDIT": supported values: "ALLOW", "DENY", spec.selector: Invalid value: '
        '0: spec.selector in body should have at least 1 properties]')


async def test_kinds_without_a_crd_schema_are_stored_as_written(server: FakeApiServer) -> None:
    pod = server.create({"kind": "Pod", "metadata": {"name": "p", "namespace": "demo"},
                         "spec": {"containers": [{"name": "c", "image": "x"}],
                                  "madeUp": True}})
    assert pod["spec"]["madeUp"] is True


async def test_a_dict_sent_as_json_patch_is_refused_as_the_real_server_does(
        server: FakeApiServer, objects: kclient.CustomObjectsApi) -> None:
    # kubernetes_asyncio sends a dict body as application/json-patch+json unless told
    # otherwise; the real server answers 400 (how the controller's first status write
    # failed on a real API server while the fake accepted it).
    await objects.create_namespaced_custom_object(GROUP, VERSION, "demo", PLURAL,
                                                  policy({"namespaces": ["a"]}))
    with pytest.raises(ApiException) as e:
        await objects.patch_namespaced_custom_object_status(
            GROUP, VERSION, "demo", PLURAL, "x", {"status": {"conditions": []}})
    assert e.value.status == 400
    assert json.loads(e.value.body)["message"] == (
        "error decoding patch: json: cannot unmarshal object into Go value of type "
        "[]handlers.jsonPatchOp")


async def test_status_subresource_and_generation(
        server: FakeApiServer, objects: kclient.CustomObjectsApi) -> None:
    with_status = {**policy({"namespaces": ["a"]}),
                   "status": {"conditions": [{"type": "Accepted", "status": "True"}]}}
    created = await objects.create_namespaced_custom_object(GROUP, VERSION, "demo", PLURAL,
                                                            with_status)
    assert "status" not in created and created["metadata"]["generation"] == 1
    condition = {"type": "Accepted", "status": "False", "reason": "Refused", "message": "m"}
    sneaky = {"spec": {"action": "DENY"}, "status": {"conditions": [condition]}}
    await objects.patch_namespaced_custom_object_status(GROUP, VERSION, "demo", PLURAL, "x",
                                                        sneaky, _content_type=MERGE)
    stored = server.get("AuthorizationPolicy", "demo", "x")
    assert stored is not None
    assert stored["status"]["conditions"] == [condition]
    assert stored["spec"]["action"] == "ALLOW"  # the status write changed no spec
    assert stored["metadata"]["generation"] == 1
    relabelled = await objects.patch_namespaced_custom_object(
        GROUP, VERSION, "demo", PLURAL, "x",
        {"metadata": {"labels": {"a": "b"}}, "status": None}, _content_type=MERGE)
    assert relabelled["status"]["conditions"] == [condition]  # kept by a main write
    assert relabelled["metadata"]["generation"] == 1
    denied = await objects.patch_namespaced_custom_object(
        GROUP, VERSION, "demo", PLURAL, "x", {"spec": {"action": "DENY"}}, _content_type=MERGE)
    assert denied["metadata"]["generation"] == 2
    listed = await objects.list_namespaced_custom_object(GROUP, VERSION, "demo", PLURAL)
    assert listed["items"][0]["kind"] == "AuthorizationPolicy"  # CR list items keep it


async def test_an_object_stored_under_a_laxer_crd_is_ratcheted(
        server: FakeApiServer, objects: kclient.CustomObjectsApi) -> None:
    server.install_crd(legacy_crd("AuthorizationPolicy"))
    server.create(policy({}))
    server.install_crd(shipped_crd("AuthorizationPolicy"))
    stored = server.get("AuthorizationPolicy", "demo", "x")
    assert stored is not None
    relabelled = copy.deepcopy(stored)
    relabelled["metadata"]["labels"] = {"team": "db"}
    server.update(relabelled)  # the invalid part is unchanged: accepted
    changed = copy.deepcopy(relabelled)
    changed["spec"]["rules"].append({})
    with pytest.raises(Refused) as e:  # the invalid part moved: refused
        server.update(changed)
    assert e.value.code == 422


async def test_a_refusal_carries_the_pruning_warnings(server: FakeApiServer) -> None:
    lax = legacy_crd("AuthorizationPolicy")
    schema = lax["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["spec"]["properties"]["rules"]["items"]["properties"]["from"][
        "items"]["properties"]["source"]["minProperties"] = 1
    server.install_crd(lax)  # prunes, then refuses what pruning emptied
    headers = {"Authorization": f"Bearer {server.token}"}
    async with aiohttp.ClientSession(server.url, headers=headers) as http, \
            http.post(PATH, json=policy(TYPO)) as r:
        assert r.status == 422
        assert r.headers.getall("Warning") == [
            '299 - "unknown field \\"spec.rules[0].from[0].source.principal\\""']


async def test_junctor_failures_read_as_the_real_servers(server: FakeApiServer) -> None:
    meta = {"name": "t", "namespace": "demo"}
    with pytest.raises(Refused) as e:  # TrafficPolicy's anyOf: one section required
        server.create({"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrafficPolicy",
                       "metadata": meta, "spec": {"targetRefs": [{"name": "c"}]}})
    assert [(c["field"], c["message"]) for c in e.value.status["details"]["causes"]] == [
        ("<nil>", 'Invalid value: "": "spec" must validate at least one schema (anyOf)'),
        ("spec.retryBudget", "Required value")]
    with pytest.raises(Refused) as e:  # AuthorizationPolicy's not: selector xor targetRefs
        server.create(policy({"namespaces": ["a"]}) | {"spec": {
            "selector": {"matchLabels": {"a": "b"}}, "targetRefs": [{"kind": "Service",
                                                                    "name": "s"}]}})
    assert [(c["field"], c["message"]) for c in e.value.status["details"]["causes"]] == [
        ("<nil>", 'Invalid value: "": "spec" must not validate the schema (not)')]

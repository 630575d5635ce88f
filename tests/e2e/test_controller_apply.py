"""Apply and delete through the admin API of a real in-process controller: every kind
valid is in force; every kind with one bad field is refused whole with a message naming
file, document, object, field path and reason, and `get` shows the previous state."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml

from controller.app import Controller, ControllerSettings
from tests.grpc_loop import quiet_stale_grpc_callbacks  # noqa: F401 (autouse)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    c = Controller(ControllerSettings(
        config_dir=tmp_path / "config", state_dir=tmp_path / "state",
        grpc_addr="127.0.0.1:0", admin_addr="127.0.0.1:0", debounce=0.02))
    async with c.running():
        yield c


def client(c: Controller) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{c.admin_port}", timeout=10,
                             headers={"Authorization": f"Bearer {c.admin_token}"})


Mutation = Callable[[list[dict[str, Any]]], None]


def _set(path: list[Any], value: Any) -> Mutation:
    def mutate(docs: list[dict[str, Any]]) -> None:
        node: Any = docs
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return mutate


# file, kind, mutation, expected message
CASES: list[tuple[str, str, Mutation, str]] = [
    ("namespace.yaml", "Namespace",
     _set([0, "metadata", "labels", "ambientmesh.io/dataplane-mode"], 1),
     "namespace.yaml doc 1 Namespace demo: "
     "metadata.labels[ambientmesh.io/dataplane-mode]: must be a string (got 1)"),
    ("pod.yaml", "Pod", _set([0, "spec", "containers", 0, "command"], []),
     "pod.yaml doc 1 Pod demo/sleep: spec.containers[0].command: must have at least 1 item(s)"),
    ("deployment.yaml", "Deployment", _set([0, "spec", "replicas"], -1),
     "deployment.yaml doc 1 Deployment demo/catalog: spec.replicas: must be >= 0 (got -1)"),
    ("service.yaml", "Service", _set([0, "spec", "ports", 0, "port"], 70000),
     "service.yaml doc 1 Service demo/catalog: spec.ports[0].port: must be <= 65535 "
     "(got 70000)"),
    ("endpointslice.yaml", "EndpointSlice",
     _set([1, "endpoints", 0, "addresses", 0], "not-an-ip"),
     "endpointslice.yaml doc 2 EndpointSlice demo/legacy-db-1: endpoints[0].addresses[0]: "
     "must be an IPv4 address (got 'not-an-ip')"),
    ("gateway.yaml", "Gateway", _set([0, "spec", "gatewayClassName"], ""),
     "gateway.yaml doc 1 Gateway demo/waypoint: spec.gatewayClassName: must not be empty"),
    ("httproute.yaml", "HTTPRoute", _set([0, "spec", "rules", 1, "backendRefs", 1, "weight"], -5),
     "httproute.yaml doc 1 HTTPRoute demo/catalog: spec.rules[1].backendRefs[1].weight: "
     "must be >= 0 (got -5)"),
    ("peerauthentication.yaml", "PeerAuthentication",
     _set([0, "spec", "mtls", "mode"], "STRICTEST"),
     "peerauthentication.yaml doc 1 PeerAuthentication demo/default: spec.mtls.mode: "
     "must be one of 'STRICT', 'PERMISSIVE' or 'UNSET' (got 'STRICTEST')"),
    ("authorizationpolicy.yaml", "AuthorizationPolicy",
     _set([1, "spec", "rules", 0, "to", 0, "operation", "methodz"], ["GET"]),
     "authorizationpolicy.yaml doc 2 AuthorizationPolicy demo/catalog-no-delete: "
     "spec.rules[0].to[0].operation.methodz: unknown field"),
    ("trafficpolicy.yaml", "TrafficPolicy", _set([0, "spec", "retryBudget", "percent"], 150),
     "trafficpolicy.yaml doc 1 TrafficPolicy demo/catalog: spec.retryBudget.percent: "
     "must be <= 100 (got 150)"),
]


@pytest.mark.parametrize(("file", "kind", "mutate", "message"), CASES,
                         ids=[c[1] for c in CASES])
async def test_valid_in_force_then_bad_field_refused(
        controller: Controller, file: str, kind: str, mutate: Mutation, message: str) -> None:
    text = (EXAMPLES / file).read_text()
    async with client(controller) as http:
        r = await http.post("/v1/apply", json={"yaml": text, "file": file})
        assert r.status_code == 200, r.text
        assert {x["action"] for x in r.json()["results"]} == {"created"}
        before = (await http.get("/v1/objects", params={"kind": kind})).json()["items"]
        assert before, f"{kind} not in force after apply"

        docs = list(yaml.safe_load_all(text))
        mutate(docs)
        bad = yaml.safe_dump_all(docs, sort_keys=False)
        r = await http.post("/v1/apply", json={"yaml": bad, "file": file})
        assert r.status_code == 422
        body = r.json()
        assert body["error"] == message
        assert body["issues"][0]["message"] == message

        after = (await http.get("/v1/objects", params={"kind": kind})).json()["items"]
        assert after == before
        # The file on disk still holds the valid version.
        on_disk = list(yaml.safe_load_all((controller.settings.config_dir / file).read_text()))
        assert on_disk == [d for d in yaml.safe_load_all(text) if d]


async def test_one_bad_document_refuses_the_whole_apply(controller: Controller) -> None:
    text = (EXAMPLES / "service.yaml").read_text() + "---\n" + (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bad, namespace: demo}\n"
        "spec: {containers: [{name: c, command: [x], ports: [{containerPort: 0}]}]}\n")
    async with client(controller) as http:
        r = await http.post("/v1/apply", json={"yaml": text, "file": "mixed.yaml"})
        assert r.status_code == 422
        assert r.json()["error"] == ("mixed.yaml doc 2 Pod demo/bad: "
                                     "spec.containers[0].ports[0].containerPort: "
                                     "must be >= 1 (got 0)")
        items = (await http.get("/v1/objects", params={"kind": "svc"})).json()["items"]
        assert items == []
    assert not (controller.settings.config_dir / "mixed.yaml").exists()


async def test_reapply_updates_in_place_and_delete_removes(controller: Controller) -> None:
    text = (EXAMPLES / "service.yaml").read_text()
    async with client(controller) as http:
        await http.post("/v1/apply", json={"yaml": text, "file": "service.yaml"})
        r = await http.post("/v1/apply", json={"yaml": text, "file": "other-name.yaml"})
        assert r.json()["results"][0]["action"] == "unchanged"
        changed = text.replace("appProtocol: http", "appProtocol: http2")
        r = await http.post("/v1/apply", json={"yaml": changed, "file": "other-name.yaml"})
        assert r.json()["results"][0]["action"] == "configured"
        # The object kept its home file; no second copy appeared.
        files = sorted(p.name for p in controller.settings.config_dir.iterdir())
        assert files == ["service.yaml"]
        svc = (await http.get("/v1/objects", params={"kind": "svc"})).json()["items"][0]
        assert svc["spec"]["ports"][0]["appProtocol"] == "http2"
        assert svc["spec"]["clusterIP"] == "10.96.0.10"
        r = await http.post("/v1/delete", json={"yaml": text, "file": "service.yaml"})
        assert r.json()["results"][0]["action"] == "deleted"
        r = await http.post("/v1/delete", json={"objects": [
            {"kind": "svc", "namespace": "demo", "name": "catalog"}]})
        assert r.status_code == 404
        assert (await http.get("/v1/objects", params={"kind": "svc"})).json()["items"] == []
    assert not (controller.settings.config_dir / "service.yaml").exists()


async def test_hand_edited_files_are_watched(controller: Controller) -> None:
    cfg = controller.settings.config_dir
    (cfg / "svc.yaml").write_text((EXAMPLES / "service.yaml").read_text())

    async def services() -> list[dict[str, Any]]:
        async with client(controller) as http:
            items: list[dict[str, Any]] = (
                await http.get("/v1/objects", params={"kind": "svc"})).json()["items"]
            return items

    with anyio.fail_after(5):
        while not await services():
            await anyio.sleep(0.05)
    # Broken by hand: refused, what was in force stays, the error is in status.
    (cfg / "svc.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: catalog, "
                                  "namespace: demo}\nspec: {ports: [{port: -1}]}\n")
    with anyio.fail_after(5):
        while not controller.configdir.errors:
            await anyio.sleep(0.05)
    assert len(await services()) == 1
    async with client(controller) as http:
        st = (await http.get("/v1/status")).json()
    assert st["controller"]["configErrors"][0]["message"] == (
        "svc.yaml doc 1 Service demo/catalog: spec.ports[0].port: must be >= 1 (got -1)")
    assert not st["controller"]["healthy"]
    (cfg / "svc.yaml").unlink()
    with anyio.fail_after(5):
        while await services():
            await anyio.sleep(0.05)

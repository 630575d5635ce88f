"""Issue 15 item 1: the waypoint objects the controller owns converge back after hand
edits of every field it sets, against a fake API server that does server-side apply
as the real one (field ownership, keyed list merge, the `Duplicate value` 422)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as kclient
from structlog.testing import capture_logs

from tests.e2e.test_k8s_controller import (
    OWNED,
    WAYPOINT_GATEWAY,
    kube_controller,
    until,
)
from tests.e2e.test_k8s_controller import server as server
from tests.fakes.kube_apiserver import FakeApiServer
from tests.fakes.kube_client import api_client

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _container(server: FakeApiServer) -> dict[str, Any]:
    dep = server.get("Deployment", "demo", "waypoint") or {}
    return dict(dep["spec"]["template"]["spec"]["containers"][0])


def _ports(obj: dict[str, Any] | None, path: tuple[str, ...], key: str
           ) -> list[tuple[str, int]]:
    cur: Any = obj or {}
    for p in path:
        cur = cur[p] if not isinstance(cur, list) else cur[int(p)]
    return [(p.get("name"), p[key]) for p in cur]


async def test_hand_edits_of_every_owned_field_are_undone(
        tmp_path: Path, server: FakeApiServer) -> None:
    """kubectl patch --type=json of the Service port, the containerPort, the image and
    a label (another field manager): the controller's apply alone cannot converge (the
    real server's 422 `Duplicate value`), so it replaces, and every field is ours again."""
    api = api_client(server)
    core, apps = kclient.CoreV1Api(api), kclient.AppsV1Api(api)
    try:
        async with kube_controller(server, tmp_path / "c", waypoint_resync=300):
            server.create(WAYPOINT_GATEWAY)
            await until(lambda: all(server.get(k, "demo", "waypoint") for k in OWNED))
            await asyncio.sleep(0.2)
            with capture_logs() as logs:
                await core.patch_namespaced_service(
                    "waypoint", "demo", [{"op": "replace", "path": "/spec/ports/0/port",
                                          "value": 15009}], field_manager="kubectl-patch")
                await apps.patch_namespaced_deployment("waypoint", "demo", [
                    {"op": "replace", "path":
                     "/spec/template/spec/containers/0/ports/1/containerPort", "value": 15021},
                    {"op": "replace", "path": "/spec/template/spec/containers/0/image",
                     "value": "evil/image:1"},
                    {"op": "replace", "path": "/metadata/labels/app.kubernetes.io~1managed-by",
                     "value": "someone"}], field_manager="kubectl-patch")

                def converged() -> bool:
                    svc = server.get("Service", "demo", "waypoint")
                    dep = server.get("Deployment", "demo", "waypoint") or {}
                    return (_ports(svc, ("spec", "ports"), "port") == [("hbone", 15008)]
                            and _ports(dep, ("spec", "template", "spec", "containers", "0",
                                             "ports"), "containerPort")
                            == [("hbone", 15008), ("metrics", 15020)]
                            and _container(server)["image"] == "ambient-mesh:test"
                            and dep["metadata"]["labels"]["app.kubernetes.io/managed-by"]
                            == "ambient-controller")
                try:
                    await until(converged, 5.0)
                except TimeoutError:
                    raise AssertionError([e for e in logs if "waypoint" in e["event"]]) from None
            replaced = [e for e in logs if e["event"] == "waypoint_replaced"]
            assert {e["object"] for e in replaced} >= {"Service demo/waypoint",
                                                       "Deployment demo/waypoint"}
            # Why an apply alone could not do it, in the API server's words:
            assert any('Duplicate value: "hbone"' in e["why"] for e in replaced)
            assert any('Duplicate value: "metrics"' in e["why"] for e in replaced)
            # Converged means quiet: once settled (an apply after the replace may move
            # ownership in managedFields), no further writes.
            await asyncio.sleep(0.5)
            rv = server.rv
            await asyncio.sleep(1.0)
            assert server.rv == rv
            assert converged()
    finally:
        await api.close()


async def test_a_refused_write_is_logged_with_the_api_servers_message(
        tmp_path: Path, server: FakeApiServer) -> None:
    with capture_logs() as logs:
        async with kube_controller(server, tmp_path / "c", waypoint_resync=0.3):
            server.refuse_writes = {"deployments"}
            server.create(WAYPOINT_GATEWAY)
            await until(lambda: any(e["event"] == "waypoint_apply_failed" for e in logs),
                        timeout=15)
    failed = next(e for e in logs if e["event"] == "waypoint_apply_failed")
    assert "writes to deployments are refused for now (test)" in failed["error"], failed

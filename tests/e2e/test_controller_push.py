"""Controller push, end to end in one process: a real grpc.aio server on 127.0.0.1
port 0, real aiohttp admin API, real gRPC and HTTP clients."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from controller.app import Controller, ControllerSettings
from mesh.api import config_pb2 as pb
from mesh.identity.node_token import derive_node_token
from mesh.xds import Backoff, ConfigSubscriber, PodReporter
from tests.grpc_loop import quiet_stale_grpc_callbacks  # noqa: F401 (autouse)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    settings = ControllerSettings(
        config_dir=tmp_path / "config", state_dir=tmp_path / "state",
        grpc_addr="127.0.0.1:0", admin_addr="127.0.0.1:0", debounce=0.02,
    )
    c = Controller(settings)
    async with c.running():
        yield c


def admin(c: Controller, auth: bool = True) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {c.admin_token}"} if auth else {}
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{c.admin_port}", headers=headers,
                             timeout=10)


def subscriber(c: Controller, node: str, **kw: object) -> ConfigSubscriber:
    return ConfigSubscriber(
        f"127.0.0.1:{c.grpc_port}", kind=pb.NODE, name=node, node=node,
        token=derive_node_token(c.secret, node), pod_cidrs=[f"10.244.{len(node)}.0/24"],
        backoff=Backoff(initial=0.05, maximum=0.2), **kw)  # type: ignore[arg-type]


async def apply_examples(c: Controller) -> None:
    async with admin(c) as http:
        for f in sorted(EXAMPLES.glob("*.yaml")):
            r = await http.post("/v1/apply", json={"yaml": f.read_text(), "file": f.name})
            assert r.status_code == 200, r.text


async def test_subscriber_gets_new_version_within_a_second_of_apply(
        controller: Controller) -> None:
    import anyio

    got: list[pb.Snapshot] = []
    sub = subscriber(controller, "node-a", apply=got.append)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sub.run)
        first = await sub.wait_for(lambda s: True, timeout=5)
        assert first.kind == pb.NODE and first.trust_domain == "cluster.local"
        await apply_examples(controller)
        # Every pod is placed on node-a, the only node.
        snap = await sub.wait_for(lambda s: len(s.pods_to_run) == 4, timeout=5)
        names = sorted(p.name for p in snap.pods_to_run)
        assert names == ["catalog-0", "catalog-1", "sleep", "waypoint"]
        t0 = time.monotonic()
        async with admin(controller) as http:
            r = await http.post("/v1/apply", json={"file": "extra.yaml", "yaml": (
                "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: demo}\n"
                "spec: {selector: {app: sleep}, ports: [{port: 9}]}\n")})
            assert r.status_code == 200
        snap = await sub.wait_for(lambda s: any(x.name == "extra" for x in s.services),
                                  timeout=1.0)
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0
        assert snap.version != first.version
        # The controller's status shows the ACK of that version.
        async with admin(controller, auth=False) as http:
            for _ in range(50):
                st = (await http.get("/v1/status")).json()
                proxy = st["proxies"][0]
                if proxy["ackedVersion"] == snap.version:
                    break
                await anyio.sleep(0.02)
        assert proxy["inSync"] and proxy["connected"] and proxy["name"] == "node-a"
        tg.cancel_scope.cancel()


async def test_nack_is_visible_in_status_and_last_good_kept(controller: Controller) -> None:
    import anyio

    def picky(snap: pb.Snapshot) -> None:
        if any(s.name == "poison" for s in snap.services):
            raise ValueError("service poison is not acceptable here")

    sub = subscriber(controller, "node-b", apply=picky)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sub.run)
        good = await sub.wait_for(lambda s: True, timeout=5)
        async with admin(controller) as http:
            r = await http.post("/v1/apply", json={"file": "p.yaml", "yaml": (
                "apiVersion: v1\nkind: Service\nmetadata: {name: poison}\n"
                "spec: {ports: [{port: 1}]}\n")})
            assert r.status_code == 200
            for _ in range(100):
                proxy = (await http.get("/v1/status")).json()["proxies"][0]
                if proxy["lastNack"]:
                    break
                await anyio.sleep(0.02)
        assert "service poison is not acceptable" in proxy["lastNack"]["error"]
        assert proxy["ackedVersion"] == good.version != proxy["latestVersion"]
        assert not proxy["inSync"]
        assert sub.snapshot is not None and sub.snapshot.version == good.version
        metrics = controller.metrics.render().decode()
        assert 'pilot_total_xds_rejects_total{type="node"} 1.0' in metrics
        tg.cancel_scope.cancel()


async def test_reported_pods_become_endpoints_and_waypoint_address(
        controller: Controller) -> None:
    import anyio

    await apply_examples(controller)
    sub = subscriber(controller, "node-c", apply=lambda s: None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sub.run)
        snap = await sub.wait_for(lambda s: len(s.pods_to_run) == 4, timeout=5)
        statuses = [pb.PodStatus(namespace=p.namespace, name=p.name, uid=p.uid,
                                 pod_ip=f"10.244.6.{i + 2}", phase=pb.RUNNING)
                    for i, p in enumerate(snap.pods_to_run)]
        token = derive_node_token(controller.secret, "node-c")
        async with PodReporter(f"127.0.0.1:{controller.grpc_port}", node="node-c",
                               token=token) as reporter:
            unknown = await reporter.report([*statuses, pb.PodStatus(
                namespace="demo", name="ghost", uid="x", phase=pb.RUNNING)])
        assert unknown == ["demo/ghost"]

        def ready(s: pb.Snapshot) -> bool:
            cat = next(x for x in s.services if x.name == "catalog")
            return len(cat.endpoints) == 2 and bool(cat.waypoint.addresses)

        snap = await sub.wait_for(ready, timeout=2)
        cat = next(x for x in snap.services if x.name == "catalog")
        assert {e.ports[0].target_port for e in cat.endpoints} == {8080}
        assert cat.vips == ["10.96.0.10"]
        wp_ip = next(p.pod_ip for p in statuses if p.name == "waypoint")
        assert list(cat.waypoint.addresses) == [wp_ip]
        # Pods listed by the admin API carry nodeName and podIP.
        async with admin(controller, auth=False) as http:
            pods = (await http.get("/v1/objects", params={"kind": "pods"})).json()["items"]
            nodes = (await http.get("/v1/objects", params={"kind": "nodes"})).json()["items"]
            dump = (await http.get("/v1/config_dump/node-c")).json()
        assert {p["spec"]["nodeName"] for p in pods} == {"node-c"}
        assert all(p["status"]["podIP"].startswith("10.244.6.") for p in pods)
        assert nodes[0]["metadata"]["name"] == "node-c" and nodes[0]["status"]["connected"]
        assert dump["proxy"]["ackedVersion"] == dump["proxy"]["latestVersion"]
        assert len(dump["snapshot"]["podsToRun"]) == 4
        tg.cancel_scope.cancel()


async def test_wrong_token_is_refused(controller: Controller) -> None:
    import anyio

    sub = ConfigSubscriber(f"127.0.0.1:{controller.grpc_port}", kind=pb.NODE, name="node-x",
                           node="node-x", token="0" * 64, apply=lambda s: None,
                           backoff=Backoff(initial=0.05, maximum=0.1))
    async with anyio.create_task_group() as tg:
        tg.start_soon(sub.run)
        with anyio.fail_after(5):
            while not sub.last_error:
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert "UNAUTHENTICATED" in sub.last_error and sub.snapshot is None
    # A node may not subscribe under another node's name either.
    other = ConfigSubscriber(f"127.0.0.1:{controller.grpc_port}", kind=pb.NODE, name="node-y",
                             node="node-x", token=derive_node_token(controller.secret, "node-x"),
                             apply=lambda s: None, backoff=Backoff(initial=0.05, maximum=0.1))
    async with anyio.create_task_group() as tg:
        tg.start_soon(other.run)
        with anyio.fail_after(5):
            while not other.last_error:
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert "PERMISSION_DENIED" in other.last_error


async def test_writes_need_the_admin_token(controller: Controller) -> None:
    async with admin(controller, auth=False) as http:
        r = await http.post("/v1/apply", json={"yaml": "", "file": "x.yaml"})
        assert r.status_code == 401
        assert "admin token" in r.json()["error"]
        assert (await http.get("/metrics")).status_code == 200


async def test_waypoint_subscribes_with_its_nodes_token(controller: Controller) -> None:
    import anyio

    await apply_examples(controller)
    node = subscriber(controller, "node-w", apply=lambda s: None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(node.run)
        await node.wait_for(lambda s: any(p.name == "waypoint" for p in s.pods_to_run), 5)
        token = derive_node_token(controller.secret, "node-w")
        wp = ConfigSubscriber(f"127.0.0.1:{controller.grpc_port}", kind=pb.WAYPOINT,
                              name="waypoint", namespace="demo", node="node-w", token=token,
                              apply=lambda s: None, backoff=Backoff(initial=0.05, maximum=0.1))
        tg.start_soon(wp.run)
        snap = await wp.wait_for(lambda s: True, timeout=5)
        assert snap.kind == pb.WAYPOINT and snap.waypoint.name == "waypoint"
        assert [r.name for r in snap.routes] == ["catalog"]
        assert [t.name for t in snap.traffic_policies] == ["catalog"]
        assert [a.name for a in snap.authorizations] == ["catalog-no-delete"]
        # Another node's token cannot subscribe as this waypoint.
        bad = ConfigSubscriber(f"127.0.0.1:{controller.grpc_port}", kind=pb.WAYPOINT,
                               name="waypoint", namespace="demo", node="node-z",
                               token=derive_node_token(controller.secret, "node-z"),
                               apply=lambda s: None, backoff=Backoff(initial=0.05, maximum=0.1))
        tg.start_soon(bad.run)
        with anyio.fail_after(5):
            while not bad.last_error:
                await anyio.sleep(0.02)
        assert "PERMISSION_DENIED" in bad.last_error and "not scheduled on node node-z" in \
            bad.last_error
        async with admin(controller, auth=False) as http:
            dump = (await http.get("/v1/config_dump/demo/waypoint")).json()
        assert dump["proxy"]["type"] == "waypoint"
        assert dump["snapshot"]["routes"][0]["name"] == "catalog"
        tg.cancel_scope.cancel()


async def test_ca_on_the_same_server_uses_placements_and_status_shows_issued(
        controller: Controller) -> None:
    import anyio
    import grpc

    from mesh.identity.ca_client import CertificateClient
    from mesh.identity.csr import build_csr, generate_key
    from mesh.identity.errors import CertificateRefusedError
    from mesh.identity.spiffe import SpiffeId

    await apply_examples(controller)
    node = subscriber(controller, "node-ca", apply=lambda s: None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(node.run)
        await node.wait_for(lambda s: len(s.pods_to_run) == 4, 5)
        identity = SpiffeId.parse("spiffe://cluster.local/ns/demo/sa/sleep")
        csr = build_csr(generate_key(), identity)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{controller.grpc_port}") as ch:
            ok = CertificateClient(ch, "node-ca", derive_node_token(controller.secret, "node-ca"))
            signed = await ok.create_certificate(csr, "demo", "sleep")
            assert str(signed.identity) == str(identity)
            other = CertificateClient(ch, "node-zz",
                                      derive_node_token(controller.secret, "node-zz"))
            with pytest.raises(CertificateRefusedError):
                await other.create_certificate(csr, "demo", "sleep")
        async with admin(controller, auth=False) as http:
            certs = (await http.get("/v1/status")).json()["certificates"]
        assert certs["enabled"] and certs["roots"][0]["signing"]
        assert [c["identity"] for c in certs["issued"]] == [str(identity)]
        assert certs["issued"][0]["notAfter"] > certs["issued"][0]["issuedAt"]
        tg.cancel_scope.cancel()

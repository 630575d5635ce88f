"""The controller in Kubernetes mode, in one process, against the fake API server with
the real kubernetes_asyncio client: registry from list+watch, EndpointSlice change ->
push, 410 -> relist, CA root in a Secret shared by replicas, TokenReview-gated CA,
waypoint Deployment/Service owned by their Gateway."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import grpc.aio
import pytest
from kubernetes_asyncio import client as kclient

from controller.app import Controller, ControllerSettings
from controller.kube.ca_secret import CA_SECRET
from controller.kube.serve import KubeSettings, kubernetes_controller
from controller.kube.source import KubeSource
from controller.kube.tokenreview import EXTRA_POD_NAME, EXTRA_POD_UID
from mesh.api import config_pb2 as pb
from mesh.identity.ca_client import CertificateClient
from mesh.identity.csr import build_csr, generate_key
from mesh.identity.errors import CertificateRefusedError
from mesh.identity.spiffe import SpiffeId
from mesh.xds import Backoff, ConfigSubscriber
from tests.fakes.kube_apiserver import FakeApiServer
from tests.fakes.kube_client import api_client
from tests.grpc_loop import quiet_stale_grpc_callbacks  # noqa: F401 (autouse)

pytestmark = pytest.mark.anyio
NODEAGENT = "system:serviceaccount:ambient-system:ambient-nodeagent"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def ns(name: str, ambient: bool = True) -> dict[str, Any]:
    ann = {"ambientmesh.io/dataplane-mode": "ambient"} if ambient else {}
    return {"kind": "Namespace", "metadata": {"name": name, "annotations": ann}}


def pod(name: str, namespace: str, node: str, ip: str, labels: dict[str, str] | None = None,
        sa: str = "default", ready: bool = True) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                        "labels": labels or {}},
            "spec": {"nodeName": node, "serviceAccountName": sa,
                     "containers": [{"name": "app", "image": "nginx",
                                     "ports": [{"containerPort": 8080, "name": "http"}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": str(ready)}]}}


def populate(server: FakeApiServer) -> None:
    server.create(ns("ambient-system", ambient=False))
    server.create(ns("demo"))
    server.create(ns("legacy", ambient=False))
    server.create(pod("ambient-nodeagent-a", "ambient-system", "n1", "172.18.0.2",
                      sa="ambient-nodeagent"))
    server.create(pod("ambient-nodeagent-b", "ambient-system", "n2", "172.18.0.3",
                      sa="ambient-nodeagent"))
    server.create(pod("web-1", "demo", "n1", "10.244.1.5", {"app": "web"}, sa="web"))
    server.create(pod("web-2", "demo", "n2", "10.244.2.7", {"app": "web"}, sa="web"))
    server.create(pod("old", "legacy", "n2", "10.244.2.9", {"app": "old"}))
    server.create({"kind": "Pod", "metadata": {"name": "pending", "namespace": "demo"},
                   "spec": {"containers": [{"name": "c", "image": "x"}]},
                   "status": {"phase": "Pending"}})
    server.create({"kind": "Service", "metadata": {"name": "web", "namespace": "demo"},
                   "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10",
                            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
    server.create({"kind": "Service", "metadata": {"name": "external", "namespace": "demo"},
                   "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 5432}]}})
    server.create(slice_for("external", ["192.0.2.10"]))


def slice_for(service: str, addresses: list[str], name: str = "") -> dict[str, Any]:
    return {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"name": name or f"{service}-abc", "namespace": "demo",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
            "ports": [{"port": 5432, "protocol": "TCP"}]}


def nodeagent_token(server: FakeApiServer, node_pod: str, token: str) -> str:
    obj = server.get("Pod", "ambient-system", node_pod)
    assert obj is not None
    server.add_token(token, NODEAGENT, audiences=["ambient-mesh"], extra={
        EXTRA_POD_NAME: [node_pod], EXTRA_POD_UID: [obj["metadata"]["uid"]]})
    return token


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
async def kube_controller(server: FakeApiServer, state: Path, **kube: Any
                          ) -> AsyncIterator[tuple[Controller, KubeSource]]:
    settings = ControllerSettings(config_dir=state / "config", state_dir=state,
                                  grpc_addr="127.0.0.1:0", admin_addr="127.0.0.1:0",
                                  debounce=0.02)
    api = api_client(server)
    try:
        async with kubernetes_controller(settings, KubeSettings(
                waypoint_image="ambient-mesh:test", **kube), api=api) as running:
            yield running
    finally:
        await api.close()


@pytest.fixture
async def running(server: FakeApiServer, tmp_path: Path
                  ) -> AsyncIterator[tuple[Controller, KubeSource]]:
    async with kube_controller(server, tmp_path / "c1") as r:
        yield r


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not cond():
            await asyncio.sleep(0.02)


def registry_pods(c: Controller) -> dict[tuple[str, str], tuple[str | None, list[str], str]]:
    return {ref: (p.node, p.addresses, p.phase) for ref, p in c.registry.view().pods.items()}


async def test_registry_mirrors_the_cluster(running: tuple[Controller, KubeSource],
                                            server: FakeApiServer) -> None:
    c, _ = running
    view = c.registry.view()
    assert view.enrolled_namespaces == {"demo"}
    pods = registry_pods(c)
    assert pods[("demo", "web-1")] == ("n1", ["10.244.1.5"], "Running")
    assert pods[("demo", "web-2")] == ("n2", ["10.244.2.7"], "Running")
    assert ("demo", "pending") not in pods  # never scheduled by us
    assert view.pods[("demo", "web-1")].enrolled and not view.pods[("legacy", "old")].enrolled
    assert view.pods[("demo", "web-1")].identity == "spiffe://cluster.local/ns/demo/sa/web"
    web = view.services[("demo", "web")]
    assert web.vips == ["10.96.0.10"]
    assert sorted((e.addresses[0], e.node, e.identity, e.ports[0]) for e in web.endpoints) == [
        ("10.244.1.5", "n1", "spiffe://cluster.local/ns/demo/sa/web", (80, 8080)),
        ("10.244.2.7", "n2", "spiffe://cluster.local/ns/demo/sa/web", (80, 8080))]
    ext = view.services[("demo", "external")]
    assert [e.addresses for e in ext.endpoints] == [["192.0.2.10"]]
    # The CA root was generated once and stored in its Secret.
    secret = server.get("Secret", "ambient-system", CA_SECRET)
    assert secret is not None and "roots.json" in secret["data"]
    # A pod turning unready leaves the endpoints.
    changed = server.get("Pod", "demo", "web-2")
    assert changed is not None
    changed["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    server.update(changed)
    await until(lambda: len(c.registry.view().services[("demo", "web")].endpoints) == 1)


async def test_endpointslice_change_is_pushed_to_node_agents(
        running: tuple[Controller, KubeSource], server: FakeApiServer) -> None:
    c, _ = running
    token = nodeagent_token(server, "ambient-nodeagent-a", "sa-token-n1")
    got: list[pb.Snapshot] = []
    sub = ConfigSubscriber(f"127.0.0.1:{c.grpc_port}", kind=pb.NODE, name="n1", node="n1",
                           token=token, apply=got.append,
                           backoff=Backoff(initial=0.05, maximum=0.2))

    def external(s: pb.Snapshot) -> list[str]:
        return sorted(a for svc in s.services if svc.name == "external"
                      for e in svc.endpoints for a in e.addresses)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sub.run)
        first = await sub.wait_for(lambda s: external(s) == ["192.0.2.10"], timeout=5)
        assert sorted(p.name for p in first.pods_to_run) == ["ambient-nodeagent-a", "web-1"]
        t0 = asyncio.get_running_loop().time()
        server.update(slice_for("external", ["192.0.2.10", "192.0.2.11"]))
        snap = await sub.wait_for(lambda s: external(s) == ["192.0.2.10", "192.0.2.11"],
                                  timeout=2)
        assert snap.version != first.version
        assert asyncio.get_running_loop().time() - t0 < 2
        server.delete("EndpointSlice", "demo", "external-abc")
        await sub.wait_for(lambda s: external(s) == [], timeout=2)
        tg.cancel_scope.cancel()
    assert c.push.records[(pb.NODE, "", "n1")].node == "n1"


async def test_watch_410_relists_without_losing_or_duplicating(
        running: tuple[Controller, KubeSource], server: FakeApiServer) -> None:
    c, source = running
    await until(lambda: server.watch_count("Pod") == 1)
    server.break_watches()
    server.delete("Pod", "demo", "web-1")
    server.create(pod("web-3", "demo", "n1", "10.244.1.9", {"app": "web"}, sa="web"))
    server.create(ns("shop"))
    server.expire_watches()  # compacts: resuming from the old version is 410 Gone
    await until(lambda: ("demo", "web-3") in registry_pods(c) and "shop" in
                c.registry.view().enrolled_namespaces)
    pods = registry_pods(c)
    assert ("demo", "web-1") not in pods
    assert source.reflectors["Pod"].cache.relists >= 1
    live = {(o["metadata"]["namespace"], o["metadata"]["name"])
            for o in server.objects["pods"].values() if o["spec"].get("nodeName")}
    assert set(pods) == live  # exactly the cluster: nothing lost, nothing twice
    ends = [e.addresses[0] for e in c.registry.view().services[("demo", "web")].endpoints]
    assert sorted(ends) == ["10.244.1.9", "10.244.2.7"]


async def csr_for(namespace: str, sa: str) -> bytes:
    return build_csr(generate_key(), SpiffeId("cluster.local", namespace, sa))


async def test_certificates_need_a_reviewed_token_and_the_right_node(
        running: tuple[Controller, KubeSource], server: FakeApiServer) -> None:
    c, _ = running
    good = nodeagent_token(server, "ambient-nodeagent-a", "sa-token-n1")
    web1 = server.get("Pod", "demo", "web-1")
    assert web1 is not None
    server.add_pod_token("someone-else", web1)
    server.add_token("other-audience", NODEAGENT, audiences=["vault"],
                     extra={EXTRA_POD_NAME: ["ambient-nodeagent-a"]})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as channel:
        csr = await csr_for("demo", "web")
        issued = await CertificateClient(channel, "n1", good).create_certificate(
            csr, "demo", "web-1")
        assert str(issued.identity) == "spiffe://cluster.local/ns/demo/sa/web"
        refusals = [
            (CertificateClient(channel, "n1", "forged"), "web-1", "UNAUTHENTICATED",
             "TokenReview refused"),
            (CertificateClient(channel, "n1", "other-audience"), "web-1", "UNAUTHENTICATED",
             "audiences"),
            (CertificateClient(channel, "n1", good), "web-2", "PERMISSION_DENIED",
             "not on 'n1'"),
            (CertificateClient(channel, "n2", good), "web-2", "PERMISSION_DENIED",
             "proves node 'n1', not 'n2'"),
            (CertificateClient(channel, "n1", "someone-else"), "web-1", "PERMISSION_DENIED",
             "neither the node agent"),
        ]
        for client, target, code, words in refusals:
            with pytest.raises(CertificateRefusedError) as info:
                await client.create_certificate(csr, "demo", target)
            assert info.value.code == code, (client.node, target, str(info.value))
            assert words in str(info.value)


async def test_waypoint_gets_deployment_service_and_only_its_own_identity(
        running: tuple[Controller, KubeSource], server: FakeApiServer) -> None:
    c, _ = running
    gw = server.create({"kind": "Gateway", "apiVersion": "gateway.networking.k8s.io/v1",
                        "metadata": {"name": "waypoint", "namespace": "demo"},
                        "spec": {"gatewayClassName": "ambient-waypoint", "listeners": [
                            {"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
    await until(lambda: server.get("NetworkPolicy", "demo", "waypoint") is not None)
    dep = server.get("Deployment", "demo", "waypoint")
    svc = server.get("Service", "demo", "waypoint")
    sa = server.get("ServiceAccount", "demo", "waypoint")
    assert dep is not None and svc is not None and sa is not None
    netpol = server.get("NetworkPolicy", "demo", "waypoint")
    assert netpol is not None
    for obj in (dep, svc, sa, netpol):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == gw["metadata"]["uid"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ambient-mesh:test"
    assert container["command"][:5] == ["ambient-waypoint", "--name", "waypoint",
                                        "--namespace", "demo"]
    # The kubelet would start its pod: the registry sees it under the Gateway's name.
    wp = server.create(pod("waypoint-7d9f-x2x", "demo", "n2", "10.244.2.50",
                           {"ambientmesh.io/waypoint": "waypoint"}, sa="waypoint"))
    await until(lambda: c.registry.view().waypoints[("demo", "waypoint")].addresses ==
                ["10.244.2.50"])
    server.add_pod_token("wp-token", wp)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as channel:
        client = CertificateClient(channel, "n2", "wp-token")
        own = await client.create_certificate(await csr_for("demo", "waypoint"), "demo",
                                              "waypoint")
        assert str(own.identity) == "spiffe://cluster.local/ns/demo/sa/waypoint"
        with pytest.raises(CertificateRefusedError, match="only request its own"):
            await client.create_certificate(await csr_for("demo", "web"), "demo", "web-2")
    # Deleting the Gateway garbage-collects what the controller made for it.
    server.delete("Gateway", "demo", "waypoint")
    assert server.get("Deployment", "demo", "waypoint") is None


WAYPOINT_GATEWAY = {"kind": "Gateway", "apiVersion": "gateway.networking.k8s.io/v1",
                    "metadata": {"name": "waypoint", "namespace": "demo"},
                    "spec": {"gatewayClassName": "ambient-waypoint"}}
OWNED = ("ServiceAccount", "Deployment", "Service", "NetworkPolicy")


async def timed(cond: Callable[[], bool], bound: float) -> float:
    """Seconds until `cond` holds; fails past `bound`."""
    t0 = asyncio.get_running_loop().time()
    await until(cond, bound)
    return asyncio.get_running_loop().time() - t0


async def test_owned_waypoint_objects_are_restored_and_removed_by_the_controller(
        tmp_path: Path) -> None:
    """No garbage collector in this API server: what the controller owns comes back
    when deleted or edited by hand, and goes when its Gateway goes, by its own doing."""
    server = FakeApiServer(bookmark_interval=0.2, garbage_collect=False)
    await server.start()
    populate(server)
    api = api_client(server)
    apps = kclient.AppsV1Api(api)
    try:
        # A long resync: every restore below must come from the watches, not the timer.
        async with kube_controller(server, tmp_path / "c", waypoint_resync=300):
            gw = server.create(WAYPOINT_GATEWAY)
            await until(lambda: all(server.get(k, "demo", "waypoint") for k in OWNED))
            first = server.get("Deployment", "demo", "waypoint")
            assert first is not None
            assert first["metadata"]["ownerReferences"][0]["uid"] == gw["metadata"]["uid"]

            # kubectl delete deployment waypoint (a real DELETE through the client):
            await apps.delete_namespaced_deployment("waypoint", "demo")
            assert server.get("Deployment", "demo", "waypoint") is None
            took = await timed(lambda: server.get("Deployment", "demo", "waypoint")
                               is not None, 3.0)
            again = server.get("Deployment", "demo", "waypoint")
            assert again is not None and again["metadata"]["uid"] != first["metadata"]["uid"]
            print(f"deployment re-created {took:.2f}s after its deletion")

            # kubectl edit: someone swaps the image; the controller's value comes back.
            edited = copy.deepcopy(again)
            edited["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
            await apps.replace_namespaced_deployment("waypoint", "demo", edited)

            def image() -> str:
                dep = server.get("Deployment", "demo", "waypoint") or {}
                return str(dep["spec"]["template"]["spec"]["containers"][0]["image"])
            await timed(lambda: image() == "ambient-mesh:test", 3.0)

            await kclient.CoreV1Api(api).delete_namespaced_service("waypoint", "demo")
            await timed(lambda: server.get("Service", "demo", "waypoint") is not None, 3.0)

            # The Gateway goes: so does everything made for it (no GC here to help).
            server.delete("Gateway", "demo", "waypoint")
            took = await timed(lambda: not any(server.get(k, "demo", "waypoint")
                                               for k in OWNED), 3.0)
            print(f"owned objects removed {took:.2f}s after their Gateway")
            await asyncio.sleep(0.5)  # and they stay gone
            assert not any(server.get(k, "demo", "waypoint") for k in OWNED)
            assert server.get("Service", "demo", "web") is not None  # not ours: untouched
    finally:
        await api.close()
        await server.stop()


async def test_refused_waypoint_write_is_retried_by_the_periodic_resync(
        tmp_path: Path, server: FakeApiServer) -> None:
    async with kube_controller(server, tmp_path / "c", waypoint_resync=0.5):
        server.refuse_writes = {"deployments"}
        server.create(WAYPOINT_GATEWAY)
        await until(lambda: all(server.get(k, "demo", "waypoint") for k in OWNED
                                if k != "Deployment"))  # the others are not held back
        await asyncio.sleep(0.3)  # every watch event of those writes has been handled
        assert server.get("Deployment", "demo", "waypoint") is None
        server.refuse_writes = set()  # nothing changes in the cluster from here on
        took = await timed(lambda: server.get("Deployment", "demo", "waypoint") is not None,
                           2.0)
        print(f"refused deployment written {took:.2f}s after writes were accepted again")


async def test_two_replicas_share_one_ca_root(server: FakeApiServer, tmp_path: Path) -> None:
    async with kube_controller(server, tmp_path / "a") as (a, _), \
            kube_controller(server, tmp_path / "b") as (b, _):
        assert a.ca is not None and b.ca is not None
        assert [r.fingerprint_sha256 for r in a.ca.roots()] == \
            [r.fingerprint_sha256 for r in b.ca.roots()]
        token = nodeagent_token(server, "ambient-nodeagent-b", "sa-token-n2")
        for c in (a, b):  # either replica serves the node agent
            async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as channel:
                issued = await CertificateClient(channel, "n2", token).create_certificate(
                    await csr_for("demo", "web"), "demo", "web-2")
                assert issued.identity.namespace == "demo"

"""Kubernetes mode: a certificate for identity X goes only to a holder proven to run
X. The real controller (in process) against the fake API server with the real
kubernetes_asyncio client; tokens are pod-bound projected tokens (name and uid in the
TokenReview's extra fields) that stop being valid with their pod, as a real API
server's do.

- With a waypoint Gateway and no waypoint pod, no node agent gets the waypoint's
  identity (the controller used to make and schedule a stand-in pod for it).
- With waypoint pods, only their own tokens get it, whichever node each runs on; a
  node agent of that node, a pod merely using the waypoint's service account and a
  token of a replaced pod are refused, each with a reason, logged and counted."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import anyio
import grpc.aio
import pytest
import structlog

from controller.app import Controller
from mesh.api import config_pb2 as pb
from mesh.identity.ca_client import CertificateClient
from mesh.identity.errors import CaUnavailableError, CertificateRefusedError
from mesh.xds import Backoff, ConfigSubscriber
from tests.e2e import test_k8s_controller as k8s
from tests.e2e.test_k8s_controller import csr_for, kube_controller, pod, until
from tests.fakes.kube_apiserver import FakeApiServer
from tests.grpc_loop import quiet_stale_grpc_callbacks  # noqa: F401 (autouse)

pytestmark = pytest.mark.anyio
server = k8s.server  # the fixture: a fake API server with a populated cluster
WAYPOINT_ID = "spiffe://cluster.local/ns/demo/sa/waypoint"
GATEWAY = {"kind": "Gateway", "apiVersion": "gateway.networking.k8s.io/v1",
           "metadata": {"name": "waypoint", "namespace": "demo"},
           "spec": {"gatewayClassName": "ambient-waypoint"}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def agent_token(server: FakeApiServer, node_pod: str) -> str:
    obj = server.get("Pod", "ambient-system", node_pod)
    assert obj is not None
    return server.add_pod_token(f"token-of-{node_pod}", obj)


def refused(c: Controller, reason: str) -> float:
    """ambient_controller_csr_refused_total{reason=...} on the controller's /metrics."""
    text = c.metrics.render().decode()
    found = re.search(r'^ambient_controller_csr_refused_total\{reason="' + reason
                      + r'"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def wp_addresses(c: Controller) -> list[str] | None:
    wp = c.registry.view().waypoints.get(("demo", "waypoint"))
    return wp.addresses if wp else None


async def expect_refusal(client: CertificateClient, namespace: str, pod_name: str,
                         sa: str, code: str | None, words: str) -> None:
    with pytest.raises(CertificateRefusedError) as info:
        await client.create_certificate(await csr_for(namespace, sa), namespace, pod_name)
    assert code is None or info.value.code == code, str(info.value)
    assert words in str(info.value), str(info.value)


@pytest.fixture
async def mesh(server: FakeApiServer, tmp_path: Any
               ) -> AsyncIterator[tuple[Controller, grpc.aio.Channel]]:
    """The controller with both node agents connected (so their nodes are known to
    it, as they would be when the old code placed a stand-in pod on one of them)."""
    async with kube_controller(server, tmp_path / "c") as (c, _), \
            grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as channel, \
            anyio.create_task_group() as tg:
        subs = [ConfigSubscriber(f"127.0.0.1:{c.grpc_port}", kind=pb.NODE, name=node,
                                 node=node, token=agent_token(server, agent),
                                 apply=lambda s: None,
                                 backoff=Backoff(initial=0.05, maximum=0.2))
                for node, agent in (("n1", "ambient-nodeagent-a"),
                                    ("n2", "ambient-nodeagent-b"))]
        for sub in subs:
            tg.start_soon(sub.run)
        await until(lambda: set(c.registry.nodes) == {"n1", "n2"})
        yield c, channel
        tg.cancel_scope.cancel()


async def test_no_node_agent_gets_a_waypoint_identity_without_a_waypoint_pod(
        mesh: tuple[Controller, grpc.aio.Channel], server: FakeApiServer) -> None:
    c, channel = mesh
    server.create(GATEWAY)
    await until(lambda: ("demo", "waypoint") in c.registry.view().waypoints)
    await anyio.sleep(0.2)  # several registry rebuilds: nothing gets scheduled
    with structlog.testing.capture_logs() as logs:
        for node, agent in (("n1", "ambient-nodeagent-a"), ("n2", "ambient-nodeagent-b")):
            client = CertificateClient(channel, node, f"token-of-{agent}")
            await expect_refusal(client, "demo", "waypoint", "waypoint", "PERMISSION_DENIED",
                                 "not known to the controller")
    lines = [e for e in logs if e["event"] == "certificate.refused"]
    assert len(lines) == 2 and all(e["pod"] == "demo/waypoint" for e in lines)
    assert refused(c, "unknown_pod") == 2
    view = c.registry.view()
    assert ("demo", "waypoint") not in view.pods, "the controller made a pod the kubelet " \
        "does not run"
    assert view.waypoints[("demo", "waypoint")].addresses == []


async def test_a_waypoint_identity_goes_only_to_its_own_pods(
        mesh: tuple[Controller, grpc.aio.Channel], server: FakeApiServer) -> None:
    c, channel = mesh
    server.create(GATEWAY)
    labels = {"ambientmesh.io/waypoint": "waypoint"}
    first = server.create(pod("waypoint-5f-a", "demo", "n2", "10.244.2.50", labels,
                              sa="waypoint"))
    await until(lambda: wp_addresses(c) == ["10.244.2.50"])
    own = CertificateClient(channel, "n2", server.add_pod_token("wp-a", first))
    issued = await own.create_certificate(await csr_for("demo", "waypoint"), "demo",
                                          "waypoint")
    assert str(issued.identity) == WAYPOINT_ID

    # A second replica on the other node (a rollout: the new pod is not ready yet and
    # the old one still speaks for the waypoint) gets it with its own token too.
    second = server.create(pod("waypoint-5f-b", "demo", "n1", "10.244.1.50", labels,
                               sa="waypoint", ready=False))
    await until(lambda: server.get("Pod", "demo", "waypoint-5f-b") is not None)
    await anyio.sleep(0.1)  # the controller's cache has it
    rollout = CertificateClient(channel, "n1", server.add_pod_token("wp-b", second))
    assert str((await rollout.create_certificate(await csr_for("demo", "waypoint"), "demo",
                                                 "waypoint")).identity) == WAYPOINT_ID

    # The node agent of the node the waypoint runs on is its kubelet's neighbour, not
    # the waypoint: refused, for the waypoint's pod and for any pod with its account.
    impostor = server.create(pod("impostor", "demo", "n2", "10.244.2.60", sa="waypoint"))
    await until(lambda: ("demo", "impostor") in c.registry.view().pods)
    agent_n2 = CertificateClient(channel, "n2", "token-of-ambient-nodeagent-b")
    await expect_refusal(agent_n2, "demo", "waypoint", "waypoint", "PERMISSION_DENIED",
                         "only to its own pods")
    await expect_refusal(agent_n2, "demo", "impostor", "waypoint", "PERMISSION_DENIED",
                         "only to its own pods")
    assert refused(c, "waypoint_identity") == 2
    # A pod that merely uses the waypoint's service account is not a waypoint pod.
    await expect_refusal(CertificateClient(channel, "n2", server.add_pod_token("imp", impostor)),
                         "demo", "waypoint", "waypoint", "PERMISSION_DENIED",
                         "not a pod of waypoint demo/waypoint")

    # The waypoint pod is replaced (same name, new uid): the old token proves nothing.
    server.delete("Pod", "demo", "waypoint-5f-a")
    replaced = server.create(pod("waypoint-5f-a", "demo", "n2", "10.244.2.51", labels,
                                 sa="waypoint"))
    await until(lambda: wp_addresses(c) == ["10.244.2.51"])
    # (UNAUTHENTICATED from the API server, or PERMISSION_DENIED from the controller
    # while it still caches the token's earlier review: the uid no longer matches.)
    await expect_refusal(own, "demo", "waypoint", "waypoint", None, "waypoint-5f-a")
    fresh = CertificateClient(channel, "n2", server.add_pod_token("wp-a2", replaced))
    assert str((await fresh.create_certificate(await csr_for("demo", "waypoint"), "demo",
                                               "waypoint")).identity) == WAYPOINT_ID
    # ...and a waypoint asks for nothing but its own certificate.
    await expect_refusal(fresh, "demo", "web-2", "web", "PERMISSION_DENIED",
                         "only request its own")
    assert refused(c, "not_own_certificate") == 1
    assert refused(c, "caller_refused") >= 2


async def test_waypoint_pods_left_by_a_gone_gateway_give_no_node_agent_its_identity(
        mesh: tuple[Controller, grpc.aio.Channel], server: FakeApiServer) -> None:
    """The Gateway is deleted (or refused by validation) while its pod still runs
    (terminating): the pod's identity is still a waypoint's, so its node's agent is
    refused; and the pod's own token is refused too (no waypoint to speak for)."""
    c, channel = mesh
    server.create(GATEWAY)
    wp = server.create(pod("waypoint-5f-a", "demo", "n2", "10.244.2.50",
                           {"ambientmesh.io/waypoint": "waypoint",
                            "gateway.networking.k8s.io/gateway-name": "waypoint"},
                           sa="waypoint"))
    await until(lambda: wp_addresses(c) == ["10.244.2.50"])
    server.delete("Gateway", "demo", "waypoint")
    await until(lambda: wp_addresses(c) is None)
    assert ("demo", "waypoint") in c.registry.view().pods  # its pod still runs
    agent_n2 = CertificateClient(channel, "n2", "token-of-ambient-nodeagent-b")
    await expect_refusal(agent_n2, "demo", "waypoint", "waypoint", "PERMISSION_DENIED",
                         "never to a node agent")
    own = CertificateClient(channel, "n2", server.add_pod_token("wp-a", wp))
    await expect_refusal(own, "demo", "waypoint", "waypoint", "PERMISSION_DENIED",
                         "neither the node agent")


async def test_a_method_the_interceptor_does_not_know_is_closed(server: FakeApiServer) -> None:
    """Kubernetes mode authenticates the three methods the mesh serves; any other one
    (a service added later, a debugging service) is refused, not served unchecked."""
    from kubernetes_asyncio import client as kclient

    from controller.kube.interceptor import KubeAuthInterceptor
    from controller.kube.tokenreview import TokenReviewer
    from tests.fakes.kube_client import api_client

    async def ping(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"pong"

    api: kclient.ApiClient = api_client(server)
    interceptor = KubeAuthInterceptor(TokenReviewer(api), secret=b"k" * 32,
                                      nodeagent_sa="ambient-system/ambient-nodeagent",
                                      pods=lambda ns, n: None, is_waypoint=lambda ns, n: False)
    grpc_server = grpc.aio.server(interceptors=[interceptor])
    grpc_server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Open", {"Ping": grpc.unary_unary_rpc_method_handler(ping)}),))
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.Open/Ping")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(b"ping", metadata=(("authorization", "Bearer anything"),))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "/test.Open/Ping" in str(info.value.details())
            missing = channel.unary_unary("/test.Open/Nothing")
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await missing(b"")
            assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await grpc_server.stop(None)
        await api.close()


async def test_no_certificate_while_the_api_server_cannot_review_tokens(
        server: FakeApiServer, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """TokenReview failing (API server overloaded or down) is UNAVAILABLE: nothing is
    signed on an unchecked token, the caller backs off and retries, and it works
    again once reviews do."""
    from aiohttp import web

    from tests.fakes.kube_apiserver import status

    async def overloaded(request: web.Request) -> web.Response:
        return status(503, "ServiceUnavailable", "the server is currently unable to handle "
                                                 "the request")

    token = agent_token(server, "ambient-nodeagent-a")
    async with kube_controller(server, tmp_path / "c", token_cache_seconds=0) as (c, _), \
            grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as channel:
        client = CertificateClient(channel, "n1", token)
        monkeypatch.setattr(server, "_token_review", overloaded)
        with pytest.raises(CaUnavailableError, match="cannot review the token"):
            await client.create_certificate(await csr_for("demo", "web"), "demo", "web-1")
        assert refused(c, "token_review_unavailable") == 1
        monkeypatch.undo()
        issued = await client.create_certificate(await csr_for("demo", "web"), "demo", "web-1")
        assert str(issued.identity) == "spiffe://cluster.local/ns/demo/sa/web"

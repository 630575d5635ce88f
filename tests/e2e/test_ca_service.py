"""The certificate service over a real gRPC server on 127.0.0.1 with a real CA."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest
import structlog

from controller.ca_service import add_certificate_service
from controller.metrics import ControllerMetrics
from mesh.identity.ca_client import CertificateClient
from mesh.identity.csr import build_csr, generate_key
from mesh.identity.errors import CaUnavailableError, CertificateRefusedError
from mesh.identity.node_token import derive_node_token
from mesh.identity.spiffe import SpiffeId
from mesh.identity.svid import CertifiedKey, load_pem_chain
from tests.grpc_loop import quiet_stale_grpc_callbacks  # noqa: F401 (autouse)
from tests.identity_helpers import new_ca

SECRET = b"k" * 32
WAYPOINTS: set[tuple[str, str]] = {("shop", "waypoint")}
PODS = {("shop", "cart-1"): ("node-a", "cart"), ("shop", "pay-1"): ("node-b", "payments"),
        # the waypoint Gateway's own pod, and another pod using its service account
        ("shop", "waypoint"): ("node-a", "waypoint"), ("shop", "sneaky"): ("node-a", "waypoint")}


class Directory:
    def pod_placement(self, namespace: str, name: str) -> tuple[str, str] | None:
        return PODS.get((namespace, name))

    def is_waypoint(self, namespace: str, name: str) -> bool:
        return (namespace, name) in WAYPOINTS


@dataclass
class Controller:
    target: str
    server: grpc.aio.Server
    metrics: ControllerMetrics

    def refused(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "ambient_controller_csr_refused_total", {"reason": reason})
        return value or 0.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, *, kubernetes: bool = False) -> AsyncIterator[Controller]:
    ca = new_ca(tmp_path / "ca", default_ttl=dt.timedelta(hours=1))
    server = grpc.aio.server()
    metrics = ControllerMetrics()
    add_certificate_service(server, ca, Directory(), SECRET, kubernetes=kubernetes,
                            metrics=metrics)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Controller(f"127.0.0.1:{port}", server, metrics)
    finally:
        await server.stop(None)


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    async with serving(tmp_path) as ctrl:
        yield ctrl


async def request(ctrl: Controller, node: str, token: str, namespace: str, pod: str,
                  identity: SpiffeId) -> CertifiedKey:
    key = generate_key()
    async with grpc.aio.insecure_channel(ctrl.target) as channel:
        client = CertificateClient(channel, node, token)
        signed = await client.create_certificate(build_csr(key, identity), namespace, pod,
                                                 dt.timedelta(minutes=10))
    ck = CertifiedKey(key, load_pem_chain(signed.chain_pem))
    ck.leaf.verify_directly_issued_by(signed.bundle.roots[0])
    return ck


@pytest.mark.anyio
async def test_node_gets_certificate_for_its_own_pod(controller: Controller) -> None:
    cart = SpiffeId.for_workload("shop", "cart")
    with structlog.testing.capture_logs() as logs:
        ck = await request(controller, "node-a", derive_node_token(SECRET, "node-a"), "shop",
                           "cart-1", cart)
    assert ck.identity == cart
    lifetime = ck.not_after - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=9) < lifetime <= dt.timedelta(minutes=10)
    issued = [e for e in logs if e["event"] == "certificate.issued"]
    assert issued and issued[0]["node"] == "node-a" and issued[0]["pod"] == "shop/cart-1"
    assert issued[0]["identity"] == str(cart)


@pytest.mark.anyio
async def test_pod_on_another_node_is_refused(controller: Controller) -> None:
    payments = SpiffeId.for_workload("shop", "payments")
    with structlog.testing.capture_logs() as logs, \
            pytest.raises(CertificateRefusedError) as info:
        await request(controller, "node-a", derive_node_token(SECRET, "node-a"), "shop",
                      "pay-1", payments)
    assert info.value.code == "PERMISSION_DENIED"
    assert "scheduled on node 'node-b', not on 'node-a'" in str(info.value)
    refused = [e for e in logs if e["event"] == "certificate.refused"]
    assert refused[0]["node"] == "node-a" and refused[0]["pod"] == "shop/pay-1"
    assert refused[0]["identity"] == str(payments)


@pytest.mark.anyio
async def test_token_of_another_node_is_unauthenticated(controller: Controller) -> None:
    with pytest.raises(CertificateRefusedError) as info:
        await request(controller, "node-b", derive_node_token(SECRET, "node-a"), "shop",
                      "pay-1", SpiffeId.for_workload("shop", "payments"))
    assert info.value.code == "UNAUTHENTICATED"
    assert "not valid for node node-b" in str(info.value)


@pytest.mark.anyio
async def test_unknown_pod_and_foreign_identity_refused(controller: Controller) -> None:
    token = derive_node_token(SECRET, "node-a")
    with pytest.raises(CertificateRefusedError, match="not known to the controller"):
        await request(controller, "node-a", token, "shop", "ghost",
                      SpiffeId.for_workload("shop", "cart"))
    # the pod is ours, but the CSR asks for a different (more powerful) identity
    with pytest.raises(CertificateRefusedError) as info:
        await request(controller, "node-a", token, "shop", "cart-1",
                      SpiffeId.for_workload("kube-system", "admin"))
    assert info.value.code == "INVALID_ARGUMENT"


@pytest.mark.anyio
async def test_unreachable_ca_is_unavailable_not_refused() -> None:
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        client = CertificateClient(channel, "node-a", "x", timeout=2)
        with pytest.raises(CaUnavailableError):
            await client.create_certificate(
                build_csr(generate_key(), SpiffeId.for_workload("shop", "cart")), "shop",
                "cart-1")


WAYPOINT = SpiffeId.for_workload("shop", "waypoint")


@pytest.mark.anyio
async def test_local_mode_waypoint_identity_only_for_its_own_pod_on_its_node(
        controller: Controller) -> None:
    """Local mode: the node agent runs the waypoint pod the controller placed on its node
    and hands it the node's token, so that node (and only it) may ask for the
    waypoint's identity, and only for the waypoint's own pod."""
    node_a, node_b = (derive_node_token(SECRET, n) for n in ("node-a", "node-b"))
    ck = await request(controller, "node-a", node_a, "shop", "waypoint", WAYPOINT)
    assert ck.identity == WAYPOINT
    with pytest.raises(CertificateRefusedError, match="not on 'node-b'"):
        await request(controller, "node-b", node_b, "shop", "waypoint", WAYPOINT)
    with structlog.testing.capture_logs() as logs, \
            pytest.raises(CertificateRefusedError) as info:
        await request(controller, "node-a", node_a, "shop", "sneaky", WAYPOINT)
    assert info.value.code == "PERMISSION_DENIED"
    assert "only to the waypoint's own pod shop/waypoint" in str(info.value)
    assert [e["cause"] for e in logs if e["event"] == "certificate.refused"] == \
        ["waypoint_identity"]
    assert controller.refused("waypoint_identity") == 1
    assert controller.refused("other_node") == 1


@pytest.mark.anyio
async def test_kubernetes_mode_no_node_credential_gets_a_waypoint_identity(
        tmp_path: Path) -> None:
    """Kubernetes mode: a waypoint's identity goes only to its own pods' tokens (proven
    by the TokenReview interceptor); a node's credential never gets it, even for a pod
    placed on that node, and asking for an ordinary pod still works."""
    async with serving(tmp_path, kubernetes=True) as ctrl:
        node_a = derive_node_token(SECRET, "node-a")
        for pod in ("waypoint", "sneaky"):
            with pytest.raises(CertificateRefusedError) as info:
                await request(ctrl, "node-a", node_a, "shop", pod, WAYPOINT)
            assert info.value.code == "PERMISSION_DENIED"
            assert "never to a node agent" in str(info.value)
        assert ctrl.refused("waypoint_identity") == 2
        cart = SpiffeId.for_workload("shop", "cart")
        assert (await request(ctrl, "node-a", node_a, "shop", "cart-1", cart)).identity == cart


@pytest.mark.anyio
async def test_every_refusal_is_counted_with_its_reason(controller: Controller) -> None:
    token = derive_node_token(SECRET, "node-a")
    cases = [("node-a", "forged", "cart-1", "unauthenticated"),
             ("node-a", token, "ghost", "unknown_pod"),
             ("node-a", token, "pay-1", "other_node")]
    for node, tok, pod, _ in cases:
        with pytest.raises(CertificateRefusedError):
            await request(controller, node, tok, "shop", pod,
                          SpiffeId.for_workload("shop", "cart"))
    with pytest.raises(CertificateRefusedError):  # the CSR asks for another identity
        await request(controller, "node-a", token, "shop", "cart-1",
                      SpiffeId.for_workload("shop", "payments"))
    for reason in ("unauthenticated", "unknown_pod", "other_node", "invalid_csr"):
        assert controller.refused(reason) == 1, reason

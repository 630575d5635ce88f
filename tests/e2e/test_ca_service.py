"""The certificate service over a real gRPC server on 127.0.0.1 with a real CA."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest
import structlog

from controller.ca_service import add_certificate_service
from mesh.identity.ca_client import CertificateClient
from mesh.identity.csr import build_csr, generate_key
from mesh.identity.errors import CaUnavailableError, CertificateRefusedError
from mesh.identity.node_token import derive_node_token
from mesh.identity.spiffe import SpiffeId
from mesh.identity.svid import CertifiedKey, load_pem_chain
from tests.grpc_loop import quiet_stale_grpc_callbacks  # noqa: F401 (autouse)
from tests.identity_helpers import new_ca

SECRET = b"k" * 32
PODS = {("shop", "cart-1"): ("node-a", "cart"), ("shop", "pay-1"): ("node-b", "payments")}


class Directory:
    def pod_placement(self, namespace: str, name: str) -> tuple[str, str] | None:
        return PODS.get((namespace, name))


@dataclass
class Controller:
    target: str
    server: grpc.aio.Server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    ca = new_ca(tmp_path / "ca", default_ttl=dt.timedelta(hours=1))
    server = grpc.aio.server()
    add_certificate_service(server, ca, Directory(), SECRET)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Controller(f"127.0.0.1:{port}", server)
    finally:
        await server.stop(None)


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

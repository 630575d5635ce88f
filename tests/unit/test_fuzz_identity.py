"""Bad input to identity: node tokens, CSRs, and the certificate service over real gRPC
on 127.0.0.1. Every refusal is the typed error (NodeAuthError, CertificateError) or
a definite gRPC status; a certificate is issued only to the node that holds the pod,
for the pod's own identity."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.ca_service import add_certificate_service
from mesh.api import ca_pb2, ca_pb2_grpc
from mesh.identity.ca import CertificateAuthority
from mesh.identity.csr import build_csr, generate_key
from mesh.identity.errors import CertificateError, NodeAuthError
from mesh.identity.node_token import (
    AUTH_HEADER,
    BEARER,
    NODE_HEADER,
    authenticate,
    derive_node_token,
)
from mesh.identity.spiffe import SpiffeId
from tests.identity_helpers import new_ca

# make soak (AMBIENT_SOAK=1) runs ten times the examples.
SCALE = 10 if os.environ.get("AMBIENT_SOAK") == "1" else 1

SECRET = b"s" * 32
# Text as gRPC metadata can carry it: no surrogates (they cannot be encoded at all).
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=80)
FUZZ = settings(max_examples=300 * SCALE, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


# ---- node tokens --------------------------------------------------------------------------

@FUZZ
@given(node=TEXT, token=TEXT, extra=st.lists(st.tuples(TEXT, TEXT | st.binary(max_size=20)),
                                              max_size=4))
def test_random_metadata_is_refused_with_node_auth_error(node: str, token: str,
                                                         extra: list[tuple[str, str | bytes]]
                                                         ) -> None:
    metadata = [*extra, (NODE_HEADER, node), (AUTH_HEADER, BEARER + token)]
    if node and token.strip() == derive_node_token(SECRET, node):
        return  # hypothesis found the HMAC: not going to happen
    with pytest.raises(NodeAuthError) as info:
        authenticate(SECRET, metadata)
    assert str(info.value)


def mutations_of(token: str) -> st.SearchStrategy[str]:
    flip = st.integers(0, len(token) - 1).map(
        lambda i: token[:i] + ("0" if token[i] != "0" else "1") + token[i + 1:])
    return st.one_of(flip, st.just(token.upper()), st.just(token[:-1]), st.just(token + "0"),
                     st.just(token[:32]), st.just(""), st.just("Bearer " + token))


@FUZZ
@given(data=st.data(), node=st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,20}\Z"))
def test_a_near_miss_token_is_refused(data: st.DataObject, node: str) -> None:
    token = derive_node_token(SECRET, node)
    assert authenticate(SECRET, [(NODE_HEADER, node), (AUTH_HEADER, BEARER + token)]) == node
    bad = data.draw(mutations_of(token))
    with pytest.raises(NodeAuthError):
        authenticate(SECRET, [(NODE_HEADER, node), (AUTH_HEADER, BEARER + bad)])
    other = data.draw(st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,20}\Z").filter(lambda n: n != node))
    with pytest.raises(NodeAuthError):  # a valid token proves its own node, no other
        authenticate(SECRET, [(NODE_HEADER, other), (AUTH_HEADER, BEARER + token)])


# ---- CSRs ---------------------------------------------------------------------------------

CART = SpiffeId.for_workload("shop", "cart")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return new_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def good_csr() -> bytes:
    return build_csr(generate_key(), CART)


def foreign_csrs() -> list[bytes]:
    """Well-formed CSRs that must still be refused."""
    out = []
    for key in (rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP384R1())):
        out.append(x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.UniformResourceIdentifier(CART.uri)]), critical=True)
                   .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    key = generate_key()
    for uris in ([SpiffeId.for_workload("kube-system", "admin").uri],
                 [CART.uri, SpiffeId.for_workload("shop", "payments").uri]):
        out.append(x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
                   .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return out


def test_foreign_but_well_formed_csrs_are_refused(ca: CertificateAuthority) -> None:
    for csr in foreign_csrs():
        with pytest.raises(CertificateError):
            ca.issue(csr, CART)


def mutate_der(pem: bytes, position: int, byte: int) -> bytes:
    lines = pem.decode().strip().splitlines()
    der = bytearray(base64.b64decode("".join(lines[1:-1])))
    der[position % len(der)] ^= byte or 1
    body = base64.encodebytes(bytes(der)).decode()
    return f"{lines[0]}\n{body}{lines[-1]}\n".encode()


@FUZZ
@given(position=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_a_corrupted_csr_is_refused_or_signed_for_exactly_its_identity(
        ca: CertificateAuthority, good_csr: bytes, position: int, byte: int) -> None:
    bad = mutate_der(good_csr, position, byte)
    try:
        issued = ca.issue(bad, CART)
    except CertificateError as e:
        assert str(e)
        return
    # A flip that still parses and verifies (e.g. in an unsigned wrapper byte) can only
    # ever yield the identity we chose to sign.
    leaf = x509.load_pem_x509_certificates(issued.chain_pem)[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [CART.uri]


@FUZZ
@given(data=st.binary(max_size=2000) | TEXT.map(str.encode) |
       st.binary(max_size=400).map(lambda b: b"-----BEGIN CERTIFICATE REQUEST-----\n" +
                                   base64.encodebytes(b) + b"-----END CERTIFICATE REQUEST-----\n"))
def test_random_csr_bytes_are_refused(ca: CertificateAuthority, data: bytes) -> None:
    with pytest.raises(CertificateError):
        ca.issue(data, CART)


# ---- the certificate service over gRPC ---------------------------------------------------

WAYPOINTS: set[tuple[str, str]] = set()
PODS = {("shop", "cart-1"): ("node-a", "cart"), ("shop", "pay-1"): ("node-b", "payments")}
ALLOWED_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                 grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}


class Directory:
    def pod_placement(self, namespace: str, name: str) -> tuple[str, str] | None:
        return PODS.get((namespace, name))

    def is_waypoint(self, namespace: str, name: str) -> bool:
        return (namespace, name) in WAYPOINTS


class Service:
    """A real grpc.aio server with the CA service on its own loop and thread; the test
    calls it with the synchronous client."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start() -> tuple[grpc.aio.Server, int]:
            server = grpc.aio.server()
            add_certificate_service(server, ca, Directory(), SECRET)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port
        self.server, self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = ca_pb2_grpc.CertificateServiceStub(self.channel)

    def call(self, request: ca_pb2.CreateCertificateRequest,
             metadata: tuple[tuple[str, str], ...]) -> ca_pb2.CreateCertificateResponse:
        return self.stub.CreateCertificate(request, metadata=metadata, timeout=10)

    def close(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    s = Service(new_ca(Path(tmp_path_factory.mktemp("ca-svc"))))
    try:
        yield s
    finally:
        s.close()


ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40)


@settings(max_examples=150 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(node=st.sampled_from(["node-a", "node-b", "node-c", ""]) | ASCII,
       token_for=st.sampled_from(["node-a", "node-b", "none"]),
       pod=st.sampled_from([("shop", "cart-1"), ("shop", "pay-1"), ("shop", "ghost")]) |
       st.tuples(ASCII, ASCII),
       csr_kind=st.sampled_from(["good", "other-identity", "garbage", "empty"]),
       validity=st.sampled_from([0, 1, -1, 60, 2**31, 2**62, -(2**63), 2**63 - 1]) |
       st.integers(-(2**63), 2**63 - 1))
def test_random_requests_get_a_definite_answer(service: Service, node: str, token_for: str,
                                               pod: tuple[str, str], csr_kind: str,
                                               validity: int) -> None:
    key = generate_key()
    csr = {"good": build_csr(key, CART if pod[1] != "pay-1" else
                             SpiffeId.for_workload("shop", "payments")),
           "other-identity": build_csr(key, SpiffeId.for_workload("kube-system", "admin")),
           "garbage": b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END",
           "empty": b""}[csr_kind]
    token = derive_node_token(SECRET, token_for) if token_for != "none" else ""
    metadata = ((AUTH_HEADER, BEARER + token), (NODE_HEADER, node))
    request = ca_pb2.CreateCertificateRequest(csr_pem=csr.decode(), pod_namespace=pod[0],
                                              pod_name=pod[1], validity_seconds=validity)
    placement = PODS.get(pod)
    legit = (token_for == node and placement is not None and placement[0] == node
             and csr_kind == "good")
    try:
        response = service.call(request, metadata)
    except grpc.RpcError as e:
        assert e.code() in ALLOWED_CODES, f"{e.code()}: {e.details()}"
        assert e.details()
        assert not legit or e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
        return
    assert legit, "a certificate was issued to a caller not entitled to it"
    leaf = x509.load_pem_x509_certificates(response.cert_chain_pem.encode())[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    expected = f"spiffe://cluster.local/ns/shop/sa/{placement[1]}"  # type: ignore[index]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [expected]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(hours=27)


@pytest.mark.parametrize("validity", [2**62, 2**63 - 1, -(2**63), -1, 1, 10**10])
def test_any_requested_validity_is_clamped_not_crashed(service: Service, validity: int) -> None:
    """validity_seconds is an int64 from the wire: the CA clamps it to [1 s, max_ttl]."""
    request = ca_pb2.CreateCertificateRequest(
        csr_pem=build_csr(generate_key(), CART).decode(), pod_namespace="shop",
        pod_name="cart-1", validity_seconds=validity)
    metadata = ((AUTH_HEADER, BEARER + derive_node_token(SECRET, "node-a")),
                (NODE_HEADER, "node-a"))
    response = service.call(request, metadata)
    leaf = x509.load_pem_x509_certificates(response.cert_chain_pem.encode())[0]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(seconds=1) <= lifetime <= dt.timedelta(hours=27)

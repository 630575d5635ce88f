"""Async client of the controller's CertificateService, authenticated as a node.

Sorts failures into the two kinds a caller must treat differently: refusals
(CertificateRefusedError: wrong node, unknown pod, bad token; retrying won't help
until something changes) and unavailability (CaUnavailableError: back off and retry,
keep using the current certificate meanwhile)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import grpc
import grpc.aio

from mesh.api import ca_pb2, ca_pb2_grpc
from mesh.identity.bundle import TrustBundle
from mesh.identity.errors import CaUnavailableError, CertificateError, CertificateRefusedError
from mesh.identity.node_token import auth_metadata
from mesh.identity.spiffe import SpiffeId
from mesh.identity.svid import load_pem_chain
from mesh.identity.token_source import TokenFileError, TokenSource, token_source

_REFUSALS = {
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}


@dataclass(frozen=True)
class SignedCertificate:
    """The CA's answer: the chain for our key and the roots to trust."""

    chain_pem: bytes
    bundle: TrustBundle
    identity: SpiffeId


class CertificateClient:
    """Requests certificates for pods of one node over an existing gRPC channel; the
    token is asked of `token` for every request (projected tokens rotate)."""

    def __init__(self, channel: grpc.aio.Channel, node: str, token: str | TokenSource, *,
                 timeout: float = 10.0) -> None:
        self._stub = ca_pb2_grpc.CertificateServiceStub(channel)
        self._token = token_source(token)
        self.node = node
        self._timeout = timeout

    async def create_certificate(self, csr_pem: bytes, namespace: str, pod: str,
                                 validity: dt.timedelta | None = None) -> SignedCertificate:
        request = ca_pb2.CreateCertificateRequest(
            csr_pem=csr_pem.decode(), pod_namespace=namespace, pod_name=pod,
            validity_seconds=int(validity.total_seconds()) if validity else 0)
        try:
            token = self._token()
        except TokenFileError as exc:  # a rotation in progress or a missing mount: retry
            raise CaUnavailableError(f"no token to request a certificate for pod "
                                     f"{namespace}/{pod}: {exc}") from None
        try:
            response = await self._stub.CreateCertificate(
                request, metadata=auth_metadata(self.node, token),
                timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            message = (f"CA refused a certificate for pod {namespace}/{pod} on node "
                       f"{self.node}: {exc.details()}")
            if exc.code() in _REFUSALS:
                raise CertificateRefusedError(message, code=exc.code().name) from None
            raise CaUnavailableError(f"CA unreachable while requesting a certificate for pod "
                                     f"{namespace}/{pod}: {exc.code().name}: {exc.details()}"
                                     ) from None
        try:
            identity = SpiffeId.parse(response.spiffe_id)
            chain_pem = response.cert_chain_pem.encode()
            load_pem_chain(chain_pem)
            bundle = TrustBundle.from_pem(identity.trust_domain,
                                          response.trust_bundle_pem.encode())
        except (CertificateError, ValueError) as exc:
            raise CaUnavailableError(f"the CA sent an unusable answer for pod {namespace}/{pod}: "
                                     f"{exc}") from None
        return SignedCertificate(chain_pem, bundle, identity)

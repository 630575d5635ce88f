"""The controller's CertificateService: authenticates node agents and signs only the
identities of pods scheduled on the calling node.

Every issuance and refusal is logged with node, pod and identity, which is the audit
trail for "who obtained which identity"."""

from __future__ import annotations

import datetime as dt
from typing import NoReturn, Protocol

import grpc
import grpc.aio
import structlog

from mesh.api import ca_pb2, ca_pb2_grpc
from mesh.identity.ca import CertificateAuthority
from mesh.identity.errors import CaError, CertificateError, InvalidSpiffeIdError, NodeAuthError
from mesh.identity.node_token import authenticate
from mesh.identity.spiffe import SpiffeId

log = structlog.get_logger(__name__)

MAX_REQUESTED_VALIDITY = 10 * 365 * 24 * 3600


class PodDirectory(Protocol):
    def pod_placement(self, namespace: str, name: str) -> tuple[str, str] | None:
        """(node name, service account) of a scheduled pod, None if unknown."""


class CertificateServicer(ca_pb2_grpc.CertificateServiceServicer):
    def __init__(self, ca: CertificateAuthority, pods: PodDirectory, secret: bytes) -> None:
        self._ca = ca
        self._pods = pods
        self._secret = secret

    async def CreateCertificate(
        self, request: ca_pb2.CreateCertificateRequest,
        context: grpc.aio.ServicerContext[ca_pb2.CreateCertificateRequest,
                                          ca_pb2.CreateCertificateResponse],
    ) -> ca_pb2.CreateCertificateResponse:
        pod = f"{request.pod_namespace}/{request.pod_name}"
        metadata = [(m[0], m[1]) for m in (context.invocation_metadata() or ())]
        try:
            node = authenticate(self._secret, metadata)
        except NodeAuthError as exc:
            claimed = next((v for k, v in metadata if k == "x-ambient-node"), "")
            log.warning("certificate.refused", node=claimed, pod=pod, identity=None,
                        reason=str(exc))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise AssertionError("unreachable") from None

        placement = self._pods.pod_placement(request.pod_namespace, request.pod_name)
        if placement is None:
            reason = (f"pod {pod} is not known to the controller (not created or not yet "
                      "scheduled); request its certificate after it is scheduled")
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, node, pod, None,
                               reason)
        pod_node, service_account = placement
        try:
            identity = SpiffeId(self._ca.trust_domain, request.pod_namespace,
                                service_account or "default")
        except InvalidSpiffeIdError as exc:
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, node, pod, None,
                               str(exc))
        if pod_node != node:
            reason = (f"pod {pod} is scheduled on node {pod_node!r}, not on {node!r}; a node "
                      "agent may only obtain certificates for pods on its own node")
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, node, pod,
                               identity, reason)

        # An int64 from the wire: capped so timedelta cannot overflow (the CA clamps the
        # lifetime to its max_ttl anyway).
        seconds = min(request.validity_seconds, MAX_REQUESTED_VALIDITY)
        validity = dt.timedelta(seconds=seconds) if seconds > 0 else None
        try:
            issued = self._ca.issue(request.csr_pem.encode(), identity, validity)
        except CertificateError as exc:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, node, pod, identity,
                               str(exc))
        except CaError as exc:
            log.error("certificate.ca_failed", node=node, pod=pod, identity=str(identity),
                      reason=str(exc))
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise AssertionError("unreachable") from None
        log.info("certificate.issued", node=node, pod=pod, identity=str(identity),
                 serial=f"{issued.serial:x}", not_after=issued.not_after.isoformat())
        return ca_pb2.CreateCertificateResponse(
            cert_chain_pem=issued.chain_pem.decode(),
            trust_bundle_pem=issued.bundle_pem.decode(),
            spiffe_id=str(identity))

    @staticmethod
    async def _refuse(context: grpc.aio.ServicerContext[ca_pb2.CreateCertificateRequest,
                                                        ca_pb2.CreateCertificateResponse],
                      code: grpc.StatusCode, node: str, pod: str,
                      identity: SpiffeId | None, reason: str) -> NoReturn:
        log.warning("certificate.refused", node=node, pod=pod,
                    identity=str(identity) if identity else None, code=code.name,
                    reason=reason)
        await context.abort(code, reason)
        raise AssertionError("grpc abort returned")  # abort always raises


def add_certificate_service(server: grpc.aio.Server, ca: CertificateAuthority,
                            pods: PodDirectory, secret: bytes) -> None:
    ca_pb2_grpc.add_CertificateServiceServicer_to_server(
        CertificateServicer(ca, pods, secret), server)

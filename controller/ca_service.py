"""The controller's CertificateService: authenticates node agents (and, in Kubernetes
mode, waypoint pods) and signs an identity only for a holder proven to run it.

Every issuance and refusal is logged with node, pod and identity, which is the audit
trail for "who obtained which identity"."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import NoReturn, Protocol

import grpc
import grpc.aio
import structlog

from controller.metrics import ControllerMetrics
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

    def is_waypoint(self, namespace: str, name: str) -> bool:
        """Whether a waypoint Gateway `name` exists in `namespace` (its service account,
        and so its identity, has the Gateway's name)."""


@dataclass(frozen=True)
class ProvenWaypoint:
    """A waypoint pod proven by its own pod-bound service-account token (Kubernetes
    mode). The authenticating interceptor sets it on the call's context (attribute
    PROVEN_WAYPOINT); nothing a client sends can set it."""

    namespace: str
    name: str  # the waypoint Gateway, which is also its service account
    pod: str  # the pod the token is bound to
    node: str


PROVEN_WAYPOINT = "proven_waypoint"
# Labels of ambient_controller_csr_refused_total{reason}; docs/security.md lists them.
REFUSAL_REASONS = ("unauthenticated", "token_review_unavailable", "caller_refused",
                   "not_own_certificate", "unknown_pod", "other_node", "waypoint_identity",
                   "invalid_identity", "invalid_csr")
_Context = grpc.aio.ServicerContext[ca_pb2.CreateCertificateRequest,
                                    ca_pb2.CreateCertificateResponse]


class CertificateServicer(ca_pb2_grpc.CertificateServiceServicer):
    """Who may obtain identity X (docs/security.md, "Certificates"):
    - a node agent, for a pod the registry places on its node. In Kubernetes mode the
      registry holds only pods the API server says a kubelet runs (spec.nodeName);
      in local mode the controller is the scheduler and the node's agent runs what
      it is given.
    - a waypoint's identity: Kubernetes mode, only a waypoint pod with its own token
      (never a node agent); local mode, only for the waypoint's own pod, from the
      node that runs it (the node agent, which hands its pod the node's token).
    Everything else is refused with a reason, logged and counted."""

    def __init__(self, ca: CertificateAuthority, pods: PodDirectory, secret: bytes, *,
                 kubernetes: bool = False, metrics: ControllerMetrics | None = None) -> None:
        self._ca = ca
        self._pods = pods
        self._secret = secret
        self._kubernetes = kubernetes
        self._metrics = metrics

    async def CreateCertificate(
        self, request: ca_pb2.CreateCertificateRequest, context: _Context,
    ) -> ca_pb2.CreateCertificateResponse:
        pod = f"{request.pod_namespace}/{request.pod_name}"
        metadata = [(m[0], m[1]) for m in (context.invocation_metadata() or ())]
        try:
            node = authenticate(self._secret, metadata)
        except NodeAuthError as exc:
            claimed = next((v for k, v in metadata if k == "x-ambient-node"), "")
            await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated",
                               str(claimed), pod, None, str(exc))
        waypoint = getattr(context, PROVEN_WAYPOINT, None) if self._kubernetes else None
        if isinstance(waypoint, ProvenWaypoint):
            identity = await self._own_waypoint_identity(context, node, request, waypoint)
        else:
            identity = await self._pod_identity(context, node, request)

        # An int64 from the wire: capped so timedelta cannot overflow (the CA clamps the
        # lifetime to its max_ttl anyway).
        seconds = min(request.validity_seconds, MAX_REQUESTED_VALIDITY)
        validity = dt.timedelta(seconds=seconds) if seconds > 0 else None
        try:
            issued = self._ca.issue(request.csr_pem.encode(), identity, validity)
        except CertificateError as exc:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid_csr", node,
                               pod, identity, str(exc))
        except CaError as exc:
            log.error("certificate.ca_failed", node=node, pod=pod, identity=str(identity),
                      reason=str(exc))
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise AssertionError("unreachable") from None
        if self._metrics is not None:
            self._metrics.certificates_issued.inc()
        log.info("certificate.issued", node=node, pod=pod, identity=str(identity),
                 caller=f"waypoint pod {waypoint.namespace}/{waypoint.pod}"
                 if isinstance(waypoint, ProvenWaypoint) else "node agent",
                 serial=f"{issued.serial:x}", not_after=issued.not_after.isoformat())
        return ca_pb2.CreateCertificateResponse(
            cert_chain_pem=issued.chain_pem.decode(),
            trust_bundle_pem=issued.bundle_pem.decode(),
            spiffe_id=str(identity))

    async def _pod_identity(self, context: _Context, node: str,
                            request: ca_pb2.CreateCertificateRequest) -> SpiffeId:
        """A node's credential: the identity of a pod on that node, if it may have it."""
        ns, name = request.pod_namespace, request.pod_name
        pod = f"{ns}/{name}"
        placement = self._pods.pod_placement(ns, name)
        if placement is None:
            where = ("the API server has no such pod running on a node"
                     if self._kubernetes else "not created or not yet scheduled")
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "unknown_pod", node,
                               pod, None, f"pod {pod} is not known to the controller ({where}); "
                               "request its certificate once it runs on this node")
        pod_node, service_account = placement
        try:
            identity = SpiffeId(self._ca.trust_domain, ns, service_account or "default")
        except InvalidSpiffeIdError as exc:
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "invalid_identity",
                               node, pod, None, str(exc))
        if pod_node != node:
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "other_node", node,
                               pod, identity,
                               f"pod {pod} is scheduled on node {pod_node!r}, not on {node!r}; "
                               "a node agent may only obtain certificates for pods on its own "
                               "node")
        if self._pods.is_waypoint(ns, service_account):
            if self._kubernetes:
                await self._refuse(
                    context, grpc.StatusCode.PERMISSION_DENIED, "waypoint_identity", node, pod,
                    identity, f"{identity} is the identity of waypoint {ns}/{service_account}: "
                    "it goes only to its own pods, each asking with its own service-account "
                    "token, never to a node agent")
            if name != service_account:
                await self._refuse(
                    context, grpc.StatusCode.PERMISSION_DENIED, "waypoint_identity", node, pod,
                    identity, f"{identity} is the identity of waypoint {ns}/{service_account}: "
                    f"it goes only to the waypoint's own pod {ns}/{service_account}, not to "
                    f"pod {pod}")
        return identity

    async def _own_waypoint_identity(self, context: _Context, node: str,
                                     request: ca_pb2.CreateCertificateRequest,
                                     waypoint: ProvenWaypoint) -> SpiffeId:
        """A waypoint pod's own token: its waypoint's identity, and nothing else."""
        ns, name = request.pod_namespace, request.pod_name
        pod = f"{ns}/{name}"
        if (ns, name) != (waypoint.namespace, waypoint.name) or node != waypoint.node:
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED,
                               "not_own_certificate", node, pod, None,
                               f"waypoint pod {waypoint.namespace}/{waypoint.pod} may only "
                               f"request its own certificate ({waypoint.namespace}/"
                               f"{waypoint.name})")
        try:
            identity = SpiffeId(self._ca.trust_domain, ns, name)
        except InvalidSpiffeIdError as exc:
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "invalid_identity",
                               node, pod, None, str(exc))
        if not self._pods.is_waypoint(ns, name):
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "caller_refused",
                               node, pod, identity,
                               f"there is no waypoint Gateway {ns}/{name} (deleted, or not "
                               "seen yet); its pods get no certificate")
        return identity

    async def _refuse(self, context: _Context, code: grpc.StatusCode, reason: str, node: str,
                      pod: str, identity: SpiffeId | None, message: str) -> NoReturn:
        if self._metrics is not None:
            self._metrics.csr_refused.labels(reason).inc()
        log.warning("certificate.refused", node=node, pod=pod,
                    identity=str(identity) if identity else None, code=code.name,
                    cause=reason, reason=message)
        await context.abort(code, message)
        raise AssertionError("grpc abort returned")  # abort always raises


def add_certificate_service(server: grpc.aio.Server, ca: CertificateAuthority,
                            pods: PodDirectory, secret: bytes, *, kubernetes: bool = False,
                            metrics: ControllerMetrics | None = None) -> None:
    ca_pb2_grpc.add_CertificateServiceServicer_to_server(
        CertificateServicer(ca, pods, secret, kubernetes=kubernetes, metrics=metrics), server)

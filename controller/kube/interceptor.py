"""gRPC server interceptor for Kubernetes mode: every call to the CA, the config push
and the node service must carry a service-account token (`authorization: Bearer`).

The token is reviewed (TokenReview), bound to a node and a role (tokenreview.decide),
and the call is then handed to the unchanged local-mode servicers with the caller's
proven node in place of the token, so their node checks (a node agent gets
certificates only for pods whose spec.nodeName is its node) apply as they are.
Waypoints are held to their own waypoint here, before the servicer runs."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
import grpc.aio
import structlog

from controller.ca_service import ProvenWaypoint
from controller.kube.errors import KubeAuthError
from controller.kube.tokenreview import Caller, PodLookup, TokenReviewer, WaypointLookup, decide
from controller.metrics import ControllerMetrics
from mesh.api import ca_pb2
from mesh.api import config_pb2 as pb
from mesh.identity.node_token import (
    AUTH_HEADER,
    BEARER,
    NODE_HEADER,
    auth_metadata,
    derive_node_token,
)

_log = structlog.get_logger("controller.kube.auth")
CREATE_CERTIFICATE = "/ambientmesh.ca.v1.CertificateService/CreateCertificate"
SUBSCRIBE = "/ambientmesh.config.v1.ConfigService/Subscribe"
REPORT_PODS = "/ambientmesh.config.v1.NodeService/ReportPods"
GUARDED = (CREATE_CERTIFICATE, SUBSCRIBE, REPORT_PODS)


class _ProvenContext:
    """The servicer's context, with the token swapped for the proven node's credential
    and, for a waypoint pod, the proven waypoint (the CA reads it; no client can set
    it)."""

    def __init__(self, inner: grpc.aio.ServicerContext, metadata: tuple[tuple[str, str], ...],
                 waypoint: ProvenWaypoint | None = None) -> None:
        self._inner = inner
        self._metadata = metadata
        self.proven_waypoint = waypoint  # ca_service.PROVEN_WAYPOINT

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _credentials(metadata: Any) -> tuple[str, str, list[tuple[str, str]]]:
    token = node = ""
    rest = []
    for key, value in metadata or ():
        if key == AUTH_HEADER and isinstance(value, str) and value.startswith(BEARER):
            token = value[len(BEARER):].strip()
        elif key == NODE_HEADER and isinstance(value, str):
            node = value
        elif isinstance(value, str):
            rest.append((key, value))
    return token, node, rest


def _own_certificate(method: str, request: Any, caller: Caller) -> bool:
    return (method == CREATE_CERTIFICATE and isinstance(request, ca_pb2.CreateCertificateRequest)
            and (request.pod_namespace, request.pod_name) == (caller.namespace, caller.name))


class KubeAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, reviewer: TokenReviewer, *, secret: bytes, nodeagent_sa: str,
                 pods: PodLookup, is_waypoint: WaypointLookup,
                 metrics: ControllerMetrics | None = None) -> None:
        self._reviewer = reviewer
        self._secret = secret
        self._nodeagent_sa = nodeagent_sa
        self._pods = pods
        self._is_waypoint = is_waypoint
        self._metrics = metrics
        self.refusals = 0

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails],
                                     Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler  # type: ignore[return-value]  # None: grpc answers UNIMPLEMENTED
        if method in GUARDED and handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if method in GUARDED and handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return self._closed(method, handler)

    def _closed(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """A method this interceptor has no rule for is refused, not served unchecked
        (fail closed: a service added later must be given its rule here first)."""
        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, method, "",
                               f"{method} is not served in Kubernetes mode (no "
                               "authorization rule for it)", "caller_refused")
        kind = (grpc.unary_unary_rpc_method_handler if handler.unary_unary is not None else
                grpc.unary_stream_rpc_method_handler if handler.unary_stream is not None else
                grpc.stream_unary_rpc_method_handler if handler.stream_unary is not None else
                grpc.stream_stream_rpc_method_handler)
        return kind(refuse, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    async def _refuse(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode,
                      method: str, claimed: str, reason: str, cause: str) -> NoReturn:
        """`cause`: the label of ambient_controller_csr_refused_total for a CSR."""
        self.refusals += 1
        if method == CREATE_CERTIFICATE and self._metrics is not None:
            self._metrics.csr_refused.labels(cause).inc()
        _log.warning("call_refused", method=method, node=claimed, code=code.name, cause=cause,
                     reason=reason)
        await context.abort(code, reason)
        raise AssertionError("grpc abort returned")

    async def _authenticate(self, context: grpc.aio.ServicerContext, method: str
                            ) -> tuple[Caller, _ProvenContext]:
        token, claimed, rest = _credentials(context.invocation_metadata())
        if not token:
            await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, method, claimed,
                               "missing 'authorization: Bearer <service-account token>'",
                               "unauthenticated")
        try:
            review = await self._reviewer.review(token)
        except Exception as e:  # the API server is down: say so, the caller retries
            await self._refuse(context, grpc.StatusCode.UNAVAILABLE, method, claimed,
                               f"cannot review the token with the API server: {e}",
                               "token_review_unavailable")
        try:
            caller = decide(review, claimed, nodeagent_sa=self._nodeagent_sa, pods=self._pods,
                            is_waypoint=self._is_waypoint)
        except KubeAuthError as e:
            if review.authenticated:
                await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, method, claimed,
                                   str(e), "caller_refused")
            await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, method, claimed,
                               str(e), "unauthenticated")
        proven = (*auth_metadata(caller.node, derive_node_token(self._secret, caller.node)),
                  *rest)
        waypoint = (ProvenWaypoint(caller.namespace, caller.name, caller.pod, caller.node)
                    if caller.role == "waypoint" else None)
        return caller, _ProvenContext(context, proven, waypoint)

    def _unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            caller, proven = await self._authenticate(context, method)
            if caller.role == "waypoint" and not _own_certificate(method, request, caller):
                await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, method,
                                   caller.node, f"{caller} may only request its own "
                                   "certificate", "not_own_certificate")
            return await behavior(request, proven)
        return guarded

    def _stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
                          ) -> Any:
            caller, proven = await self._authenticate(context, method)
            if caller.role == "waypoint":
                requests = await self._waypoint_hello(requests, context, caller, method)
            result = behavior(requests, proven)
            if inspect.isasyncgen(result):
                async for item in result:
                    await context.write(item)
                return None
            return await result
        return guarded

    async def _waypoint_hello(self, requests: AsyncIterator[Any],
                              context: grpc.aio.ServicerContext, caller: Caller, method: str
                              ) -> AsyncIterator[Any]:
        """Check the first message names the caller's own waypoint, then replay it."""
        first = await anext(requests, None)
        hello = first.hello if isinstance(first, pb.SubscribeRequest) and \
            first.WhichOneof("request") == "hello" else None
        if hello is None or hello.kind != pb.WAYPOINT or \
                (hello.namespace, hello.name) != (caller.namespace, caller.name):
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, method, caller.node,
                               f"{caller} may only subscribe as itself", "caller_refused")

        async def replay() -> AsyncIterator[Any]:
            yield first
            async for item in requests:
                yield item
        return replay()

"""Who is calling: a service-account token checked by the API server (TokenReview),
then bound to a node through the pod it was issued for.

`decide` is the whole policy and is pure: only the node agent's service account gets
node rights, only for the node its pod runs on; a waypoint's service account gets
its own waypoint and nothing else, and only with a token bound to one of its own
pods. A pod-bound token must name the pod's uid too, and that pod must still be the
one running (a replaced pod's token proves nothing). `TokenReviewer` does the API call and caches
accepted tokens for a minute (every RPC of a proxy carries its token)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from kubernetes_asyncio import client as kclient

from controller.kube.errors import KubeAuthError
from controller.kube.translate import WAYPOINT_POD_LABEL

_log = structlog.get_logger("controller.kube.auth")
SA_PREFIX = "system:serviceaccount:"
EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"
DEFAULT_NODEAGENT_SA = "ambient-system/ambient-nodeagent"
DEFAULT_AUDIENCE = "ambient-mesh"

PodLookup = Callable[[str, str], Mapping[str, Any] | None]
WaypointLookup = Callable[[str, str], bool]


@dataclass(frozen=True)
class ReviewedToken:
    authenticated: bool
    username: str = ""
    extra: Mapping[str, Sequence[str]] = field(default_factory=dict)
    error: str = ""

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> ReviewedToken:
        user = status.get("user") or {}
        return cls(bool(status.get("authenticated")), str(user.get("username") or ""),
                   {k: list(v) for k, v in (user.get("extra") or {}).items()},
                   str(status.get("error") or ""))

    def first(self, key: str) -> str:
        values = self.extra.get(key) or []
        return values[0] if values else ""


@dataclass(frozen=True)
class Caller:
    role: Literal["node", "waypoint"]
    node: str
    namespace: str = ""
    name: str = ""
    pod: str = ""  # the pod the token is bound to ("" for a node-bound token)

    def __str__(self) -> str:
        if self.role == "node":
            return f"node agent of {self.node}"
        return f"waypoint {self.namespace}/{self.name} (pod {self.pod}) on {self.node}"


def decide(review: ReviewedToken, claimed_node: str, *, nodeagent_sa: str,
           pods: PodLookup, is_waypoint: WaypointLookup) -> Caller:
    """The caller a reviewed token proves, or KubeAuthError saying why not."""
    if not review.authenticated:
        raise KubeAuthError(f"TokenReview refused the token ({review.error or 'not valid'}); "
                            "mount a current projected service-account token")
    if not review.username.startswith(SA_PREFIX):
        raise KubeAuthError(f"{review.username!r} is not a service account; only node agents "
                            "and waypoints may call the controller")
    sa_ns, _, sa_name = review.username[len(SA_PREFIX):].partition(":")
    node = review.first(EXTRA_NODE_NAME)
    pod_name = review.first(EXTRA_POD_NAME)
    if pod_name:
        pod = pods(sa_ns, pod_name)
        if pod is None:
            raise KubeAuthError(f"the token was issued for pod {sa_ns}/{pod_name}, which the "
                                "controller does not know (deleted, or not yet seen)")
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        uid = review.first(EXTRA_POD_UID)
        if not uid:  # a real API server names both: without the uid, which pod is it?
            raise KubeAuthError(f"the token names pod {sa_ns}/{pod_name} but not its uid "
                                f"({EXTRA_POD_UID}); mount a projected service-account token")
        if uid != meta.get("uid"):
            raise KubeAuthError(f"the token was issued for an earlier pod named "
                                f"{sa_ns}/{pod_name} (uid {uid}), not the one running now")
        pod_node = str(spec.get("nodeName") or "")
        if not pod_node or (node and node != pod_node):
            raise KubeAuthError(f"pod {sa_ns}/{pod_name} is not running on a node the token "
                                "names")
        node = pod_node
    if not node:
        raise KubeAuthError("the token is not bound to a pod; mount a projected "
                            "service-account token (serviceAccountToken volume)")
    if claimed_node and claimed_node != node:
        raise KubeAuthError(f"the token proves node {node!r}, not {claimed_node!r}")
    if f"{sa_ns}/{sa_name}" == nodeagent_sa:
        return Caller("node", node, pod=pod_name)
    if is_waypoint(sa_ns, sa_name):
        # The waypoint's identity goes to its own pods only: the token must be bound to
        # a pod the waypoint's Deployment made (its label and service account).
        pod = pods(sa_ns, pod_name) if pod_name else None
        labels = ((pod or {}).get("metadata") or {}).get("labels") or {}
        pod_sa = ((pod or {}).get("spec") or {}).get("serviceAccountName")
        if pod is None or labels.get(WAYPOINT_POD_LABEL) != sa_name or pod_sa != sa_name:
            raise KubeAuthError(f"the token of service account {sa_ns}/{sa_name} is not bound "
                                f"to a pod of waypoint {sa_ns}/{sa_name} (pod "
                                f"{pod_name or 'none'} is not a pod of waypoint {sa_ns}/"
                                f"{sa_name}: it lacks label {WAYPOINT_POD_LABEL}={sa_name})")
        return Caller("waypoint", node, sa_ns, sa_name, pod_name)
    raise KubeAuthError(f"service account {sa_ns}/{sa_name} is neither the node agent's "
                        f"({nodeagent_sa}) nor a waypoint's")


class TokenReviewer:
    def __init__(self, api: kclient.ApiClient, *, audiences: Sequence[str] = (DEFAULT_AUDIENCE,),
                 ttl: float = 60.0) -> None:
        self._auth = kclient.AuthenticationV1Api(api)
        self._api = api
        self._audiences = list(audiences)
        self._ttl = ttl
        self._cache: dict[str, tuple[float, ReviewedToken]] = {}
        self.reviews = 0

    async def review(self, token: str) -> ReviewedToken:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        body = kclient.V1TokenReview(
            api_version="authentication.k8s.io/v1", kind="TokenReview",
            spec=kclient.V1TokenReviewSpec(token=token, audiences=self._audiences or None))
        answer = await self._auth.create_token_review(body)
        self.reviews += 1
        status = self._api.sanitize_for_serialization(answer).get("status") or {}
        result = ReviewedToken.from_status(status)
        if result.authenticated:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            self._cache[key] = (now + self._ttl, result)
        return result

"""The kinds the controller watches, and the kubernetes_asyncio call that lists each.

List items come back without apiVersion/kind (the API server leaves them out of
lists), so the table also says what to stamp on them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from kubernetes_asyncio import client as kclient

ListCall = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class WatchedKind:
    kind: str
    group: str  # "" is the core group
    version: str
    plural: str
    # CRDs may be missing (Gateway API not installed yet): 404 is waited out, not fatal.
    optional: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def list_call(self, api: kclient.ApiClient) -> ListCall:
        """The client function that lists (and, with watch=True, watches) this kind in
        every namespace."""
        if self.group == "":
            core = kclient.CoreV1Api(api)
            calls: dict[str, ListCall] = {
                "namespaces": core.list_namespace,
                "pods": core.list_pod_for_all_namespaces,
                "services": core.list_service_for_all_namespaces,
            }
            return calls[self.plural]
        if self.group == "discovery.k8s.io" and self.plural == "endpointslices":
            return kclient.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces
        return partial(kclient.CustomObjectsApi(api).list_cluster_custom_object,
                       self.group, self.version, self.plural)

    def stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("apiVersion", self.api_version)
        obj.setdefault("kind", self.kind)
        return obj


NAMESPACES = WatchedKind("Namespace", "", "v1", "namespaces")
PODS = WatchedKind("Pod", "", "v1", "pods")
SERVICES = WatchedKind("Service", "", "v1", "services")
ENDPOINT_SLICES = WatchedKind("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices")
GATEWAYS = WatchedKind("Gateway", "gateway.networking.k8s.io", "v1", "gateways", optional=True)
HTTP_ROUTES = WatchedKind("HTTPRoute", "gateway.networking.k8s.io", "v1", "httproutes",
                          optional=True)
PEER_AUTHENTICATIONS = WatchedKind("PeerAuthentication", "ambientmesh.io", "v1alpha1",
                                   "peerauthentications", optional=True)
AUTHORIZATION_POLICIES = WatchedKind("AuthorizationPolicy", "ambientmesh.io", "v1alpha1",
                                     "authorizationpolicies", optional=True)
TRAFFIC_POLICIES = WatchedKind("TrafficPolicy", "ambientmesh.io", "v1alpha1",
                               "trafficpolicies", optional=True)

CONTROLLER_KINDS: tuple[WatchedKind, ...] = (
    NAMESPACES, PODS, SERVICES, ENDPOINT_SLICES, GATEWAYS, HTTP_ROUTES,
    PEER_AUTHENTICATIONS, AUTHORIZATION_POLICIES, TRAFFIC_POLICIES,
)

"""The kinds ambient-mesh reads, and the kubernetes_asyncio call that lists each.

List items come back without apiVersion/kind (the API server leaves them out of
lists), so the table also says what to stamp on them. Built-in kinds are listed
through their typed API class (the same call, with watch=True, watches); anything
else through CustomObjectsApi."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from kubernetes_asyncio import client as kclient

ListCall = Callable[..., Awaitable[Any]]

# (group, plural) -> the typed API class and its list-in-every-namespace method.
_BUILTIN: dict[tuple[str, str], tuple[type[Any], str]] = {
    ("", "namespaces"): (kclient.CoreV1Api, "list_namespace"),
    ("", "pods"): (kclient.CoreV1Api, "list_pod_for_all_namespaces"),
    ("", "services"): (kclient.CoreV1Api, "list_service_for_all_namespaces"),
    ("", "serviceaccounts"): (kclient.CoreV1Api, "list_service_account_for_all_namespaces"),
    ("apps", "deployments"): (kclient.AppsV1Api, "list_deployment_for_all_namespaces"),
    ("networking.k8s.io", "networkpolicies"): (kclient.NetworkingV1Api,
                                               "list_network_policy_for_all_namespaces"),
    ("discovery.k8s.io", "endpointslices"): (kclient.DiscoveryV1Api,
                                             "list_endpoint_slice_for_all_namespaces"),
}


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
        builtin = _BUILTIN.get((self.group, self.plural))
        if builtin is not None:
            api_class, method = builtin
            call: ListCall = getattr(api_class(api), method)
            return call
        return partial(kclient.CustomObjectsApi(api).list_cluster_custom_object,
                       self.group, self.version, self.plural)

    def stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("apiVersion", self.api_version)
        obj.setdefault("kind", self.kind)
        return obj


NAMESPACES = WatchedKind("Namespace", "", "v1", "namespaces")
PODS = WatchedKind("Pod", "", "v1", "pods")
SERVICES = WatchedKind("Service", "", "v1", "services")
SERVICE_ACCOUNTS = WatchedKind("ServiceAccount", "", "v1", "serviceaccounts")
DEPLOYMENTS = WatchedKind("Deployment", "apps", "v1", "deployments")
NETWORK_POLICIES = WatchedKind("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies")
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

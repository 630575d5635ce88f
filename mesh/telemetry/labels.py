"""Istio's standard metric labels, built in one place from plain inputs, for the node
proxy's TCP metrics and the waypoint's HTTP metrics alike, so existing Grafana and
Kiali dashboards work unchanged and the two proxies name a workload the same way.

A workload is named as Istio names it: its deployment (the `ambientmesh.io/deployment`,
`app.kubernetes.io/name` or `app` label), else the pod's name; its app is the
`app.kubernetes.io/name` or `app` label. "unknown" is written only for what is truly
unknown, never for a caller the proxy can name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mesh.authz.principal import namespace_of

UNKNOWN = "unknown"
DEPLOYMENT_LABELS = ("ambientmesh.io/deployment", "app.kubernetes.io/name", "app")
APP_LABELS = ("app.kubernetes.io/name", "app")

PEER_LABELS = (
    "source_workload", "source_workload_namespace", "source_principal", "source_app",
    "destination_workload", "destination_workload_namespace", "destination_principal",
    "destination_app", "destination_service", "destination_service_name",
    "destination_service_namespace",
)
HTTP_LABELS = ("reporter", *PEER_LABELS, "request_protocol", "response_code",
               "response_flags", "connection_security_policy")
# Istio's TCP metrics carry no response_code.
TCP_LABELS = ("reporter", *PEER_LABELS, "request_protocol", "response_flags",
              "connection_security_policy")


@dataclass(frozen=True, slots=True)
class Party:
    """One side of a connection as the labels name it."""

    workload: str = UNKNOWN
    namespace: str = UNKNOWN
    principal: str = UNKNOWN  # spiffe://<td>/ns/<ns>/sa/<sa>
    app: str = UNKNOWN


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """The destination Service: host (FQDN), name and namespace."""

    host: str = UNKNOWN
    name: str = UNKNOWN
    namespace: str = UNKNOWN


# PEER_LABELS values, in order.
PeerValues = tuple[str, str, str, str, str, str, str, str, str, str, str]

NOBODY = Party()
NO_SERVICE = ServiceRef()


def _first(labels: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    return next((labels[k] for k in keys if labels.get(k)), None)


def workload_name(name: str, labels: Mapping[str, str]) -> str:
    """The workload (deployment) a pod belongs to, as source_workload writes it."""
    return _first(labels, DEPLOYMENT_LABELS) or name or UNKNOWN


def party(name: str, namespace: str, labels: Mapping[str, str], identity: str = "") -> Party:
    """A workload of the snapshot (pod name, namespace, labels, SPIFFE ID) as labelled."""
    return Party(workload_name(name, labels), namespace or UNKNOWN, identity or UNKNOWN,
                 _first(labels, APP_LABELS) or UNKNOWN)


def source_party(at_address: Party | None, principal: str | None) -> Party:
    """Who called, from the workload at the connection's source address (None: none in
    the snapshot) and the peer's verified SPIFFE ID (None: plaintext).

    With a principal, the workload at the address is used only when the certificate
    proves it (its identity is the principal): an address alone never puts a
    workload's name on another identity's traffic. Otherwise the principal still gives
    the principal and namespace labels. Plaintext is labelled by address, as Istio
    does (connection_security_policy="none" says it is unproven)."""
    if not principal:
        return at_address or NOBODY
    if at_address is not None and at_address.principal == principal:
        return at_address
    return Party(UNKNOWN, namespace_of(principal) or UNKNOWN, principal, UNKNOWN)


def peer_values(source: Party, destination: Party, service: ServiceRef) -> PeerValues:
    """The PEER_LABELS values (who called whom), in order; the same for every request
    between two parties, so a proxy may compute them once and keep them."""
    return (source.workload, source.namespace, source.principal, source.app,
            destination.workload, destination.namespace, destination.principal,
            destination.app, service.host, service.name, service.namespace)


def http_label_values(reporter: str, peer: Sequence[str], protocol: str,
                      response_code: int, response_flags: str, security: str
                      ) -> tuple[str, ...]:
    """HTTP_LABELS values: reporter, the peer values, "http" | "grpc", the status code,
    Envoy's response flags ("-": none) and "mutual_tls" | "none"."""
    return (reporter, *peer, protocol, str(response_code), response_flags, security)


def tcp_label_values(reporter: str, peer: Sequence[str], response_flags: str,
                     security: str) -> tuple[str, ...]:
    """TCP_LABELS values: reporter "source" | "destination", the peer values, "tcp"."""
    return (reporter, *peer, "tcp", response_flags, security)

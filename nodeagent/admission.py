"""Whether the node proxy may serve a pod's connection at all, before any policy.

Fail closed: a connection is refused (typed error, logged, counted) while what would
decide it is missing, instead of being served with defaults that allow more:
  - no snapshot received yet (agent just started, controller unreachable): the pod's
    STRICT mode, authorizations and waypoint bindings are unknown -> ConfigNotReceived;
  - the snapshot has no policy for this pod (the controller has not seen it yet, e.g.
    a Kubernetes pod the agent's watch saw first) -> PolicyUnknown (inbound);
  - the pod is captured but its certificate is not issued (CA refused/unreachable)
    -> CertificatePending: refused both ways, never sent or accepted in plaintext.
Sans-I/O: the handlers call these with what they hold and reset on the error.
"""

from __future__ import annotations

from typing import Protocol

from mesh.api import config_pb2 as pb
from mesh.identity.spiffe import SpiffeId
from nodeagent.errors import CertificatePending, ConfigNotReceived, PolicyUnknown
from nodeagent.state import ProxyState


class CertificateCheck(Protocol):
    def certificate_error(self, identity: SpiffeId) -> str | None:
        """Why no valid certificate is held for `identity`, or None when one is."""


class Pod(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def identity(self) -> str: ...


def _config(state: ProxyState, pod: Pod) -> None:
    if not state.received:
        raise ConfigNotReceived(pod.key)


def _certificate(certs: CertificateCheck, pod: Pod) -> None:
    why = certs.certificate_error(SpiffeId.parse(pod.identity))
    if why is not None:
        raise CertificatePending(pod.key, pod.identity, why)


def outbound(state: ProxyState, certs: CertificateCheck, pod: Pod) -> None:
    """A connection the pod makes: needs config and the pod's own certificate."""
    _config(state, pod)
    _certificate(certs, pod)


def inbound(state: ProxyState, pod: Pod, workload: pb.Workload | None) -> None:
    """A connection to the pod (HBONE already proves the pod's certificate): needs
    config and this pod's policy in it."""
    _config(state, pod)
    if workload is None or workload.uid not in state.policies:
        raise PolicyUnknown(pod.key, state.version)


def inbound_plaintext(state: ProxyState, certs: CertificateCheck, pod: Pod,
                      workload: pb.Workload | None) -> None:
    """Plaintext to the pod: refused like everything else of a pod with no certificate
    yet (it is not in the mesh until it has one), and while its policy is unknown."""
    inbound(state, pod, workload)
    _certificate(certs, pod)

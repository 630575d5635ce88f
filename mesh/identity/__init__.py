"""Workload identity: SPIFFE IDs, the certificate authority, X.509 SVIDs, trust
bundles, TLS contexts built from them, and node authentication tokens.

Owns every decision about who a certificate names and who may trust it. Does no
network I/O except the CA gRPC client (ca_client); the CA service itself lives in
the controller, the certificate manager in the node agent."""

from mesh.identity.bundle import TrustBundle
from mesh.identity.errors import (
    CaError,
    CaUnavailableError,
    CertificateError,
    CertificateRefusedError,
    IdentityError,
    InvalidSpiffeIdError,
    NodeAuthError,
)
from mesh.identity.spiffe import SpiffeId
from mesh.identity.svid import CertifiedKey

__all__ = [
    "CaError",
    "CaUnavailableError",
    "CertificateError",
    "CertificateRefusedError",
    "CertifiedKey",
    "IdentityError",
    "InvalidSpiffeIdError",
    "NodeAuthError",
    "SpiffeId",
    "TrustBundle",
]

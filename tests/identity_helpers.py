"""Helpers shared by the identity and HBONE tests: a CA in a temp dir and SVIDs from it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from mesh.identity.bundle import TrustBundle
from mesh.identity.ca import CertificateAuthority
from mesh.identity.ca_client import SignedCertificate
from mesh.identity.csr import build_csr, generate_key
from mesh.identity.errors import CaUnavailableError, CertificateRefusedError
from mesh.identity.spiffe import SpiffeId
from mesh.identity.svid import CertifiedKey, load_pem_chain


def mint(ca: CertificateAuthority, identity: SpiffeId,
         ttl: dt.timedelta | None = None) -> tuple[CertifiedKey, TrustBundle]:
    key = generate_key()
    issued = ca.issue(build_csr(key, identity), identity, ttl)
    return (CertifiedKey(key, load_pem_chain(issued.chain_pem)),
            TrustBundle.from_pem(ca.trust_domain, issued.bundle_pem))


def new_ca(path: Path, trust_domain: str = "cluster.local", **kwargs: object
           ) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(path, trust_domain, **kwargs)  # type: ignore[arg-type]


class ManualClock:
    """A clock tests move by hand, so expiry and rotation are deterministic."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> None:
        self.now += delta


class InProcessCa:
    """A CertificateSource calling a real CertificateAuthority directly (no gRPC), with
    a switch that makes it unreachable, for certificate-manager tests."""

    def __init__(self, ca: CertificateAuthority, placements: dict[tuple[str, str], str]) -> None:
        self.ca = ca
        self.placements = placements  # (namespace, pod) -> service account
        self.down = False
        self.calls = 0

    async def create_certificate(self, csr_pem: bytes, namespace: str, pod: str,
                                 validity: dt.timedelta | None = None) -> SignedCertificate:
        self.calls += 1
        if self.down:
            raise CaUnavailableError("CA is down (test switch)")
        sa = self.placements.get((namespace, pod))
        if sa is None:
            raise CertificateRefusedError(f"pod {namespace}/{pod} unknown",
                                          code="PERMISSION_DENIED")
        identity = SpiffeId(self.ca.trust_domain, namespace, sa)
        issued = self.ca.issue(csr_pem, identity, validity)
        return SignedCertificate(issued.chain_pem,
                                 TrustBundle.from_pem(self.ca.trust_domain, issued.bundle_pem),
                                 identity)

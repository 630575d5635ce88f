"""Trust bundles: the set of root certificates currently trusted for a trust domain.

During a root rotation the bundle holds the old and the new root together, which is
what lets certificates from either verify while the mesh converges."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mesh.identity.errors import CertificateError
from mesh.identity.svid import chain_to_pem, load_pem_chain


@dataclass(frozen=True)
class TrustBundle:
    """Roots trusted for one trust domain, newest first."""

    trust_domain: str
    roots: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        if not self.roots:
            raise CertificateError(
                f"the trust bundle of {self.trust_domain} is empty: nothing could be verified"
            )
        for root in self.roots:
            try:
                bc = root.extensions.get_extension_for_class(x509.BasicConstraints).value
            except x509.ExtensionNotFound:
                bc = None
            if bc is None or not bc.ca:
                raise CertificateError(
                    f"certificate {root.subject.rfc4514_string()} in the trust bundle of "
                    f"{self.trust_domain} is not a CA certificate"
                )

    def to_pem(self) -> bytes:
        return chain_to_pem(self.roots)

    def fingerprints(self) -> tuple[str, ...]:
        return tuple(r.fingerprint(hashes.SHA256()).hex() for r in self.roots)

    @classmethod
    def from_pem(cls, trust_domain: str, pem: bytes) -> TrustBundle:
        return cls(trust_domain, load_pem_chain(pem))

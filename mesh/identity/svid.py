"""X.509 SVIDs: a workload's private key with the certificate chain naming it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.identity.errors import CertificateError, InvalidSpiffeIdError
from mesh.identity.spiffe import SpiffeId


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The single SPIFFE URI SAN of a certificate (an SVID carries exactly one)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError(
            f"certificate serial {cert.serial_number:x} has no subjectAltName, so it names no "
            "SPIFFE identity"
        ) from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith("spiffe://")]
    if len(uris) != 1:
        raise CertificateError(
            f"certificate serial {cert.serial_number:x} has {len(uris)} SPIFFE URI SANs; "
            "an SVID must have exactly one"
        )
    try:
        return SpiffeId.parse(uris[0])
    except InvalidSpiffeIdError as exc:
        raise CertificateError(f"certificate serial {cert.serial_number:x}: {exc}") from None


def load_pem_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    try:
        certs = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError as exc:
        raise CertificateError(f"cannot parse PEM certificates: {exc}") from None
    if not certs:
        raise CertificateError("the PEM data holds no certificate")
    return certs


def chain_to_pem(chain: tuple[x509.Certificate, ...] | list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)


@dataclass(frozen=True)
class CertifiedKey:
    """A private key and the chain (leaf first, root excluded) that certifies it.

    Immutable so that swapping a renewed one in is a single reference assignment and
    a connection that captured the old one keeps a consistent pair."""

    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]
    identity: SpiffeId = field(init=False)

    def __post_init__(self) -> None:
        if not self.chain:
            raise CertificateError("a certified key needs at least the leaf certificate")
        leaf_key = self.chain[0].public_key()
        if leaf_key != self.key.public_key():
            raise CertificateError(
                "the leaf certificate does not match the private key; request a new "
                "certificate for this key"
            )
        object.__setattr__(self, "identity", spiffe_id_of(self.chain[0]))

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def serial(self) -> int:
        return self.leaf.serial_number

    @property
    def issuer(self) -> str:
        return self.leaf.issuer.rfc4514_string()

    def renew_at(self) -> dt.datetime:
        """Half-life: late enough to not hammer the CA, early enough to survive an outage
        of up to half the lifetime."""
        return self.not_before + (self.not_after - self.not_before) / 2

    def is_valid_at(self, now: dt.datetime) -> bool:
        return self.not_before <= now < self.not_after

    def chain_pem(self) -> bytes:
        return chain_to_pem(self.chain)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, key_pem: bytes, chain_pem: bytes) -> CertifiedKey:
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise CertificateError(f"cannot parse the private key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError("workload keys must be ECDSA keys")
        return cls(key, load_pem_chain(chain_pem))

"""The certificate a node proxy really presents for a pod: fetched with a TLS
handshake on the pod's HBONE port (15008) from its node's network namespace, then
described. A TLS 1.3 server sends its certificate before it checks ours, so no
client certificate is needed to read it."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mesh.ports import HBONE_PORT
from mesh.runtime.netns import NetnsError, socket_in


class ProbeError(Exception):
    """The handshake could not be made; str() says why."""


def fetch_der(netns: str, ip: str, port: int = HBONE_PORT, timeout: float = 3.0) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["h2"])
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        raw = socket_in(netns, family, socket.SOCK_STREAM)
    except NetnsError as e:
        raise ProbeError(str(e)) from None
    raw.settimeout(timeout)
    try:
        raw.connect((ip, port))
        with ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as e:
        raise ProbeError(f"TLS handshake with {ip}:{port} failed: {e}") from None
    finally:
        raw.close()
    if not der:
        raise ProbeError(f"{ip}:{port} presented no certificate")
    return der


def describe(der: bytes) -> dict[str, Any]:
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return {
        "spiffeId": next((u for u in uris if u.startswith("spiffe://")), ""),
        "serial": f"{cert.serial_number:x}",
        "notBefore": cert.not_valid_before_utc.isoformat(),
        "notAfter": cert.not_valid_after_utc.isoformat(),
        "issuer": cert.issuer.rfc4514_string(),
        "subject": cert.subject.rfc4514_string(),
        "fingerprintSha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


def issued_by_bundle(der: bytes, bundle_file: Path) -> bool | None:
    """Whether a root of the mesh's trust bundle signed the leaf directly (None when
    the bundle cannot be read)."""
    try:
        roots = x509.load_pem_x509_certificates(bundle_file.read_bytes())
    except (OSError, ValueError):
        return None
    leaf = x509.load_der_x509_certificate(der)
    for root in roots:
        try:
            leaf.verify_directly_issued_by(root)
            return True
        except (ValueError, TypeError, Exception):  # InvalidSignature and friends
            continue
    return False

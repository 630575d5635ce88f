"""TLS contexts for mesh mTLS, built from a CertifiedKey and a TrustBundle.

Both sides: TLS 1.3 only, client certificate required, ALPN h2, AES-GCM suites with
TLS_AES_128_GCM_SHA256 first (what Envoy and ztunnel choose; OpenSSL's default would
pick AES-256, which is slower and buys nothing here). No hostname check: peers are
named by the SPIFFE URI SAN, which callers read with `peer_identity`: it accepts only
an X.509-SVID (exactly one URI SAN, a SPIFFE ID, not a CA certificate) from the trust
domain the context was built for. A chain that verifies is not enough: a bundle's
root (an operator-supplied root shared with other meshes, say) may sign IDs of other
trust domains, and an ID with a second URI beside it is not an SVID."""

from __future__ import annotations

import ctypes
import functools
import os
import ssl
import sys
from functools import cache

import structlog
from cryptography import x509

from mesh.identity.bundle import TrustBundle
from mesh.identity.errors import CertificateError, InvalidSpiffeIdError
from mesh.identity.spiffe import SpiffeId
from mesh.identity.svid import CertifiedKey

log = structlog.get_logger(__name__)

ALPN = "h2"
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"


@cache
def _set_ciphersuites_fn() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """SSL_CTX_set_ciphersuites from the libssl the ssl module itself uses.

    Python's ssl has no API for TLS 1.3 suites; the function is looked up in the very
    library mapped into this process so the SSL_CTX pointer matches its ABI."""
    if sys.implementation.name != "cpython" or hasattr(sys, "gettotalrefcount"):
        return None
    path = None
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                name = line.rsplit(None, 1)[-1]
                if "/libssl.so" in name:
                    path = name
                    break
    except OSError:
        return None
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        fn = lib.SSL_CTX_set_ciphersuites
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    fn.restype = ctypes.c_int
    return fn


def _ssl_ctx_pointer(ctx: ssl.SSLContext) -> int | None:
    # CPython's PySSLContext starts with PyObject_HEAD followed by `SSL_CTX *ctx`.
    offset = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
    return ctypes.c_void_p.from_address(id(ctx) + offset).value


def prefer_aes128(ctx: ssl.SSLContext) -> bool:
    """Restrict TLS 1.3 to AES-GCM, AES-128 first. Returns False (and logs) if the
    running Python does not allow it; the context then keeps OpenSSL's defaults."""
    fn = _set_ciphersuites_fn()
    pointer = _ssl_ctx_pointer(ctx) if fn is not None else None
    if fn is None or not pointer:
        log.warning("tls.ciphersuites_unchanged", reason="SSL_CTX_set_ciphersuites unavailable")
        return False
    if fn(pointer, TLS13_SUITES.encode()) != 1:
        log.warning("tls.ciphersuites_unchanged", reason="SSL_CTX_set_ciphersuites failed")
        return False
    names = [c["name"] for c in ctx.get_ciphers() if c.get("protocol") == "TLSv1.3"]
    return names == TLS13_SUITES.split(":")


def _load_certified_key(ctx: ssl.SSLContext, ck: CertifiedKey) -> None:
    """Load key + chain without ever writing the key to a filesystem: ssl only reads
    files, so hand it an anonymous memory file (memfd) by its /proc path."""
    data = ck.key_pem() + ck.chain_pem()
    fd = os.memfd_create("svid", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


class MeshTlsContext(ssl.SSLContext):
    """An SSLContext that remembers the trust domain of the bundle it verifies with,
    so `peer_identity` checks a peer against it without every caller passing it."""

    trust_domain: str = ""


def _base_context(purpose: int, ck: CertifiedKey, bundle: TrustBundle) -> ssl.SSLContext:
    if ck.identity.trust_domain != bundle.trust_domain:
        raise CertificateError(f"certificate for {ck.identity} does not belong to trust domain "
                               f"{bundle.trust_domain} of the bundle")
    ctx = MeshTlsContext(purpose)
    ctx.trust_domain = bundle.trust_domain
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.options |= ssl.OP_NO_TICKET  # no resumption: every connection proves its identity
    ctx.set_alpn_protocols([ALPN])
    ctx.load_verify_locations(cadata=bundle.to_pem().decode())
    _load_certified_key(ctx, ck)
    prefer_aes128(ctx)
    return ctx


def server_context(ck: CertifiedKey, bundle: TrustBundle) -> ssl.SSLContext:
    """Context for an HBONE listener: presents `ck`, requires a client certificate."""
    return _base_context(ssl.PROTOCOL_TLS_SERVER, ck, bundle)


def client_context(ck: CertifiedKey, bundle: TrustBundle) -> ssl.SSLContext:
    """Context for dialing a peer: presents `ck` (the *source* workload's identity)."""
    return _base_context(ssl.PROTOCOL_TLS_CLIENT, ck, bundle)


def _context_trust_domain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    ctx = ssl_object.context
    return ctx.trust_domain or None if isinstance(ctx, MeshTlsContext) else None


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket,
                  trust_domain: str | None = None) -> SpiffeId:
    """The SPIFFE ID of a peer whose chain the handshake has verified.

    `trust_domain` defaults to the one the context was built for (server_context /
    client_context); with neither, nothing is accepted (fail closed). Raises
    CertificateError if there is no verified certificate, it is a CA certificate, it
    does not carry exactly one URI SAN (X.509-SVID spec §2: one URI SAN, the SPIFFE
    ID; DNS or IP SANs beside it are allowed), or the ID is from another trust
    domain."""
    expected = trust_domain or _context_trust_domain(ssl_object)
    if not expected:
        raise CertificateError("no trust domain to check the peer against: build the TLS "
                               "context with server_context/client_context or pass one")
    der = ssl_object.getpeercert(binary_form=True)
    if not der or not ssl_object.getpeercert():
        raise CertificateError("the peer presented no verified certificate")
    return _svid_identity(der, expected)


@functools.lru_cache(maxsize=1024)
def _svid_identity(der: bytes, expected: str) -> SpiffeId:
    """The SVID checks of `peer_identity` on one DER certificate. Cached per (DER,
    trust domain): the answer depends on nothing else, and a peer reconnecting (a cold
    tunnel to each of a pod's destinations, every pod of one ServiceAccount) presents
    the same leaf, so the X.509 parse (~80 µs a side) is paid once per certificate.
    Only successes are cached (lru_cache keeps no exceptions); the chain is still
    verified by OpenSSL in every handshake, before this is reached."""
    try:
        cert = x509.load_der_x509_certificate(der)
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    except ValueError as exc:  # malformed extensions: cryptography refuses to parse
        raise CertificateError(f"the peer certificate cannot be parsed: {exc}") from None
    if constraints is not None and constraints.ca:
        raise CertificateError("the peer certificate is a CA certificate; an SVID is a leaf "
                               "(basicConstraints CA=false)")
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    except ValueError as exc:
        raise CertificateError(f"the peer certificate's SANs cannot be parsed: {exc}") from None
    if len(uris) != 1:
        raise CertificateError(f"the peer certificate has {len(uris)} URI SANs "
                               f"{[u[:80] for u in uris[:3]]}; an SVID has exactly one, "
                               "its SPIFFE ID")
    try:
        identity = SpiffeId.parse(uris[0])
    except InvalidSpiffeIdError as exc:
        raise CertificateError(f"peer certificate: {exc}") from None
    if identity.trust_domain != expected:
        raise CertificateError(f"peer {identity} is from trust domain {identity.trust_domain}, "
                               f"not {expected}")
    return identity


def svid_cache_info() -> functools._CacheInfo:
    """Hits and misses of the per-certificate SVID cache (tests, profiling)."""
    return _svid_identity.cache_info()


def svid_cache_clear() -> None:
    _svid_identity.cache_clear()

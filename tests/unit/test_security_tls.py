"""Who the HBONE server (node proxy port 15008) lets in, over real TLS on loopback:
only a client certificate chaining to the mesh's trust bundle, valid now, carrying a
SPIFFE ID. Self-signed, other-CA, expired, identity-less and certificate-less clients
are refused in the handshake; none of them reaches the app."""

from __future__ import annotations

import datetime as dt
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mesh.identity.spiffe import SpiffeId
from tests.hbone_helpers import CLIENT_ID
from tests.identity_helpers import mint, new_ca
from tests.unit.test_fuzz_hbone import LoopbackHbone, assert_still_serving, exchange


@pytest.fixture(scope="module")
def hbone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackHbone]:
    server = LoopbackHbone(tmp_path_factory.mktemp("hbone-sec"))
    try:
        yield server
    finally:
        server.close()


def context_with(cert_pem: bytes, key: ec.EllipticCurvePrivateKey, tmp: Path,
                 trust: LoopbackHbone) -> ssl.SSLContext:
    """A client context presenting `cert_pem`/`key` and trusting the mesh's server."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the attacker does not care who the server is
    ctx.set_alpn_protocols(["h2"])
    cert, keyfile = tmp / "c.pem", tmp / "k.pem"
    cert.write_bytes(cert_pem)
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    keyfile.chmod(0o600)
    ctx.load_cert_chain(cert, keyfile)
    return ctx


def self_signed(uri: str | None) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intruder")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=1))
               .not_valid_after(now + dt.timedelta(hours=1)))
    if uri:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(uri)]), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), key


def connect_as(hb: LoopbackHbone, ctx: ssl.SSLContext) -> tuple[str, bytes]:
    """One CONNECT to the app through `hb`, the client presenting `ctx` (not its own
    certificate); the outcome and data as `exchange` reports them."""
    original = hb.client_ctx
    hb.client_ctx = ctx
    try:
        return exchange(hb, [(":method", "CONNECT"), (":authority", f"127.0.0.1:{hb.app_port}")],
                        b"x")
    finally:
        hb.client_ctx = original


def refused(hb: LoopbackHbone, ctx: ssl.SSLContext) -> str:
    """The error that ends the attempt; the attempt must not reach the app."""
    try:
        sock = hb.dial(ctx)
    except (ssl.SSLError, ConnectionError) as e:
        return f"handshake refused: {type(e).__name__}: {e}"
    # TLS 1.3: the client finishes before the server checks its certificate, so the
    # refusal arrives on the first read.
    with sock:
        try:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            data = sock.recv(65536)
        except (ssl.SSLError, ConnectionError) as e:
            return f"refused on first read: {type(e).__name__}: {e}"
        if data == b"":
            return "closed by the server before any HTTP/2 byte"
        raise AssertionError(f"server answered an unauthenticated client: {data[:60]!r}")


def test_self_signed_spiffe_certificate_is_refused(hbone: LoopbackHbone, tmp_path: Path) -> None:
    cert, key = self_signed(CLIENT_ID.uri)
    why = refused(hbone, context_with(cert, key, tmp_path, hbone))
    print(f"self-signed client: {why}")
    assert_still_serving(hbone)


def test_other_ca_certificate_is_refused(hbone: LoopbackHbone, tmp_path: Path) -> None:
    """A real SVID for the same SPIFFE ID and trust domain, from another mesh's CA."""
    other = new_ca(tmp_path / "other-ca")
    ck, _ = mint(other, CLIENT_ID)
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ck.chain)
    why = refused(hbone, context_with(chain, ck.key, tmp_path, hbone))
    print(f"other-CA client: {why}")
    assert_still_serving(hbone)


def test_other_trust_domain_is_refused(hbone: LoopbackHbone, tmp_path: Path) -> None:
    other = new_ca(tmp_path / "evil-ca", trust_domain="evil.local")
    ck, _ = mint(other, SpiffeId.for_workload("shop", "cart", "evil.local"))
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ck.chain)
    refused(hbone, context_with(chain, ck.key, tmp_path, hbone))


def test_expired_certificate_from_the_mesh_ca_is_refused(hbone: LoopbackHbone,
                                                         tmp_path: Path) -> None:
    ck, _ = mint(hbone.ca, CLIENT_ID, dt.timedelta(seconds=1))
    time.sleep(max(0.0, (ck.not_after - dt.datetime.now(dt.UTC)).total_seconds()) + 1.1)
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ck.chain)
    why = refused(hbone, context_with(chain, ck.key, tmp_path, hbone))
    print(f"expired client: {why}")


def test_no_client_certificate_is_refused(hbone: LoopbackHbone) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    why = refused(hbone, ctx)
    print(f"no client certificate: {why}")


def test_mesh_ca_certificate_without_spiffe_id_gets_no_tunnel(hbone: LoopbackHbone,
                                                               tmp_path: Path) -> None:
    """Signed by the mesh CA's own key but with no SPIFFE ID (forged outside the CA's
    issue path): TLS may accept the chain, the HBONE layer must not open a tunnel."""
    key = ec.generate_private_key(ec.SECP256R1())
    authority = hbone.ca.signing_authority()
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([]))
            .issuer_name(authority.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("cart.shop")]),
                           critical=False)
            .sign(authority.key, hashes.SHA256()))
    ctx = context_with(cert.public_bytes(serialization.Encoding.PEM), key, tmp_path, hbone)
    try:
        sock = hbone.dial(ctx)
    except (ssl.SSLError, ConnectionError):
        return  # refused in the handshake: fine too
    sock.close()
    outcome, data = connect_as(hbone, ctx)
    print(f"CA-signed, no SPIFFE ID: {outcome}")
    assert outcome != "status 200" and data == b""
    assert_still_serving(hbone)


def test_the_legitimate_client_still_works(hbone: LoopbackHbone) -> None:
    assert_still_serving(hbone)

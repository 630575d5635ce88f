"""Real TLS handshakes over socketpairs with contexts from mesh.identity.tls."""

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.identity import tls
from mesh.identity.ca import CertificateAuthority
from mesh.identity.errors import CertificateError
from mesh.identity.spiffe import SpiffeId
from tests.hbone_helpers import CLIENT_ID
from tests.identity_helpers import ManualClock, mint, new_ca
from tests.unit.test_fuzz_hbone import LoopbackHbone, assert_still_serving
from tests.unit.test_security_tls import connect_as, refused

A = SpiffeId.for_workload("default", "a")
B = SpiffeId.for_workload("web", "b")


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
              ) -> tuple[ssl.SSLSocket | BaseException, ssl.SSLSocket | BaseException]:
    s1, s2 = socket.socketpair()
    s1.settimeout(5)
    s2.settimeout(5)
    result: dict[str, ssl.SSLSocket | BaseException] = {}

    def serve() -> None:
        try:
            ss = server_ctx.wrap_socket(s1, server_side=True)
            ss.recv(1)  # TLS 1.3: a client-cert failure surfaces at the first read
            result["server"] = ss
        except (OSError, ssl.SSLError) as exc:
            result["server"] = exc
            s1.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        cs = client_ctx.wrap_socket(s2)
        cs.sendall(b"x")
        client: ssl.SSLSocket | BaseException = cs
    except (OSError, ssl.SSLError) as exc:
        client = exc
    t.join()
    return result["server"], client


def test_mutual_tls_identities_cipher_alpn(tmp_path: Path) -> None:
    ca = new_ca(tmp_path)
    a, bundle = mint(ca, A)
    b, _ = mint(ca, B)
    server, client = handshake(tls.server_context(a, bundle), tls.client_context(b, bundle))
    assert isinstance(server, ssl.SSLSocket) and isinstance(client, ssl.SSLSocket)
    assert tls.peer_identity(server) == B
    assert tls.peer_identity(client, "cluster.local") == A
    assert client.version() == "TLSv1.3"
    cipher = client.cipher()
    assert cipher is not None and cipher[0] == "TLS_AES_128_GCM_SHA256"
    assert server.selected_alpn_protocol() == "h2"


def test_certificate_from_other_ca_refused(tmp_path: Path) -> None:
    ca = new_ca(tmp_path / "one")
    rogue = new_ca(tmp_path / "two")
    a, bundle = mint(ca, A)
    b, rogue_bundle = mint(rogue, B)
    server, _ = handshake(tls.server_context(a, bundle), tls.client_context(b, bundle))
    assert isinstance(server, ssl.SSLError)
    assert "certificate verify failed" in str(server) or "unknown ca" in str(server).lower()
    del rogue_bundle


def test_expired_certificate_refused(tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC) - dt.timedelta(hours=3))
    ca = new_ca(tmp_path, default_ttl=dt.timedelta(hours=1), clock=clock)
    expired, _ = mint(ca, B)
    clock.now = dt.datetime.now(dt.UTC)
    a, bundle = mint(ca, A)
    server, _ = handshake(tls.server_context(a, bundle), tls.client_context(expired, bundle))
    assert isinstance(server, ssl.SSLError)
    assert "expired" in str(server)


def test_peer_identity_requires_trust_domain(tmp_path: Path) -> None:
    ca = new_ca(tmp_path)
    a, bundle = mint(ca, A)
    b, _ = mint(ca, B)
    server, _ = handshake(tls.server_context(a, bundle), tls.client_context(b, bundle))
    assert isinstance(server, ssl.SSLSocket)
    with pytest.raises(CertificateError, match="trust domain"):
        tls.peer_identity(server, "example.org")


# -- X.509-SVID shape and trust domain (issue 18 finding 8) --------------------------------
# Certificates below are signed by the mesh CA's own key (as a compromised or shared
# root would sign them): the chain verifies, so only peer_identity stands in the way.


def forge(ca: CertificateAuthority, sans: Sequence[x509.GeneralName], is_ca: bool = False
          ) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """A leaf signed by the CA's signing key with exactly these SANs: PEM chain + key."""
    authority = ca.signing_authority()
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    # A subject name: strict verification refuses an empty one without SANs, and the
    # point is a chain that verifies.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(authority.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=1))
               .not_valid_after(now + dt.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                                     ExtendedKeyUsageOID.SERVER_AUTH]),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   authority.key.public_key()), critical=False))
    if is_ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True).add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=True)
    leaf = builder.sign(authority.key, hashes.SHA256())
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM)
                     for c in (leaf, *authority.intermediates))
    return chain, key


def presenting(chain: bytes, key: ec.EllipticCurvePrivateKey, tmp: Path) -> ssl.SSLContext:
    """A client context that presents `chain` and does not check the server."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    (tmp / "chain.pem").write_bytes(chain)
    (tmp / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx.load_cert_chain(tmp / "chain.pem", tmp / "key.pem")
    return ctx


def identity_seen_by_server(tmp: Path, sans: list[x509.GeneralName], is_ca: bool = False,
                            trust_domain: str | None = None) -> SpiffeId:
    """Handshake with the mesh's server context (chain verified), then peer_identity as
    the HBONE server calls it (no explicit trust domain unless given)."""
    ca = new_ca(tmp / "ca")
    a, bundle = mint(ca, A)
    server, client = handshake(tls.server_context(a, bundle),
                               presenting(*forge(ca, sans, is_ca), tmp))
    assert isinstance(server, ssl.SSLSocket), f"the chain should verify: {server!r} {client!r}"
    try:
        return tls.peer_identity(server, trust_domain)
    finally:
        server.close()


URI = x509.UniformResourceIdentifier
B_URI = URI(B.uri)


@pytest.mark.parametrize("other", [
    URI("https://evil.example/ns/web/sa/b"), URI("spiffe://cluster.local/ns/web/sa/admin"),
    URI("spiffe://evil.local/ns/web/sa/b"), URI("urn:uuid:1234"), URI("spiffe://cluster.local"),
])
def test_spiffe_id_with_another_uri_refused(tmp_path: Path, other: x509.GeneralName) -> None:
    for sans in ([B_URI, other], [other, B_URI]):
        with pytest.raises(CertificateError, match="2 URI SANs"):
            identity_seen_by_server(tmp_path, sans)


def test_foreign_trust_domain_signed_by_our_root_refused(tmp_path: Path) -> None:
    evil = URI("spiffe://evil.local/ns/web/sa/b")
    with pytest.raises(CertificateError, match=r"trust domain evil\.local, not cluster\.local"):
        identity_seen_by_server(tmp_path, [evil])
    with pytest.raises(CertificateError, match="trust domain"):
        identity_seen_by_server(tmp_path, [evil], trust_domain="cluster.local")


@pytest.mark.parametrize(("sans", "why"), [
    ([], "0 URI SANs"),
    ([x509.DNSName("b.web.svc")], "0 URI SANs"),
    ([URI("https://b.web.svc/")], "not a SPIFFE ID"),
    ([URI("spiffe://cluster.local/ns/web")], "not a workload ID"),
    ([URI("SPIFFE://cluster.local/ns/web/sa/b")], "not a SPIFFE ID"),
])
def test_certificates_without_one_workload_spiffe_id_refused(
        tmp_path: Path, sans: list[x509.GeneralName], why: str) -> None:
    with pytest.raises(CertificateError, match=why):
        identity_seen_by_server(tmp_path, sans)


def test_ca_certificate_as_a_peer_refused(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="CA certificate"):
        identity_seen_by_server(tmp_path, [B_URI], is_ca=True)


def test_svid_with_dns_and_ip_sans_beside_its_one_uri_accepted(tmp_path: Path) -> None:
    """The SVID spec limits URI SANs only; DNS/IP SANs beside the ID are allowed."""
    sans = [x509.DNSName("b.web.svc"), B_URI, x509.IPAddress(ipaddress.ip_address("10.0.0.7"))]
    assert identity_seen_by_server(tmp_path, sans) == B


def test_context_from_outside_the_mesh_has_no_trust_domain_to_accept(tmp_path: Path) -> None:
    """Fail closed: a context not built by server_context/client_context cannot vouch
    for any trust domain unless the caller names one."""
    ca = new_ca(tmp_path / "ca")
    a, bundle = mint(ca, A)
    b, _ = mint(ca, B)
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    plain.verify_mode = ssl.CERT_REQUIRED
    plain.load_verify_locations(cadata=bundle.to_pem().decode())
    (tmp_path / "a.pem").write_bytes(a.key_pem() + a.chain_pem())
    plain.load_cert_chain(tmp_path / "a.pem")
    server, _ = handshake(plain, tls.client_context(b, bundle))
    assert isinstance(server, ssl.SSLSocket)
    with pytest.raises(CertificateError, match="no trust domain"):
        tls.peer_identity(server)
    assert tls.peer_identity(server, "cluster.local") == B


def test_hbone_server_opens_no_tunnel_for_forged_svids(tmp_path: Path) -> None:
    """The node proxy's HBONE listener (real TLS, real server): a CA-signed certificate
    of a foreign trust domain, or with a second URI, gets no tunnel to the app."""
    hb = LoopbackHbone(tmp_path / "hb")
    try:
        for i, sans in enumerate(([URI("spiffe://evil.local/ns/default/sa/client")],
                                  [URI(CLIENT_ID.uri), URI("https://evil.example/")])):
            ctx = presenting(*forge(hb.ca, sans), tmp_path)
            why = refused(hb, ctx)
            assert why, i
            outcome, data = connect_as(hb, ctx)
            assert outcome != "status 200" and data == b"", (sans, outcome)
        assert_still_serving(hb)
    finally:
        hb.close()


def test_client_refuses_a_server_with_a_foreign_or_doubled_identity(tmp_path: Path) -> None:
    """The dialing side (node proxy, waypoint) checks the server's SVID the same way."""
    ca = new_ca(tmp_path / "ca")
    b, bundle = mint(ca, B)
    for sans in ([URI("spiffe://evil.local/ns/default/sa/a")], [URI(A.uri), URI("https://x/")]):
        chain, key = forge(ca, sans)
        (tmp_path / "s.pem").write_bytes(chain + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(tmp_path / "s.pem")
        server_ctx.verify_mode = ssl.CERT_OPTIONAL
        server_ctx.load_verify_locations(cadata=bundle.to_pem().decode())
        server, client = handshake(server_ctx, tls.client_context(b, bundle))
        assert isinstance(client, ssl.SSLSocket), client
        with pytest.raises(CertificateError):
            tls.peer_identity(client)
        client.close()
        if isinstance(server, ssl.SSLSocket):
            server.close()

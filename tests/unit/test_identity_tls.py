"""Real TLS handshakes over socketpairs with contexts from mesh.identity.tls."""

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest

from mesh.identity import tls
from mesh.identity.errors import CertificateError
from mesh.identity.spiffe import SpiffeId
from tests.identity_helpers import ManualClock, mint, new_ca

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
    assert client.cipher()[0] == "TLS_AES_128_GCM_SHA256"
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

"""Running the real kubectl against the fake API server: a throw-away TLS certificate
(kubectl sends no bearer token over plain HTTP) and a kubeconfig with the fake's
token. Tests skip when no kubectl is installed."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import shutil
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakes.kube_apiserver import FakeApiServer


def tls_context(directory: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kube-apiserver")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "apiserver.crt", directory / "apiserver.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


def kubectl_path() -> str | None:
    return shutil.which("kubectl")


async def kubectl(server: FakeApiServer, directory: Path, *args: str) -> str:
    """Run `kubectl <args>` against `server` (HTTPS); its stdout, or AssertionError with
    stderr when it fails."""
    config = directory / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: fake\n  cluster:\n    server: {server.url}\n"
        "    insecure-skip-tls-verify: true\n"
        f"users:\n- name: admin\n  user:\n    token: {server.token}\n"
        "contexts:\n- name: fake\n  context: {cluster: fake, user: admin}\n"
        "current-context: fake\n")
    binary = kubectl_path()
    assert binary is not None
    proc = await asyncio.create_subprocess_exec(
        binary, *args, env={**os.environ, "KUBECONFIG": str(config),
                            "HOME": str(directory)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return out.decode()

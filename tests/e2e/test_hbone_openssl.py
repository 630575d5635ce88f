"""A real `openssl s_client` against an HBONE server: mTLS is enforced, and a valid
client's SPIFFE identity reaches the handler (via an HTTP/2 CONNECT built with h2 and
piped through s_client)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
import structlog

from mesh.identity.spiffe import SpiffeId
from mesh.identity.svid import CertifiedKey
from tests.hbone_helpers import CLIENT_ID, Mesh, echo, hbone_mesh, tcp_app
from tests.identity_helpers import ManualClock, mint, new_ca

# openssl is installed by scripts/setup.sh: this test never skips.


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": True})


def write_identity(path: Path, ck: CertifiedKey) -> list[str]:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cert.pem").write_bytes(ck.chain_pem())
    (path / "key.pem").write_bytes(ck.key_pem())
    (path / "key.pem").chmod(0o600)
    return ["-cert", str(path / "cert.pem"), "-key", str(path / "key.pem")]


async def s_client(mesh: Mesh, tmp: Path, extra: list[str], stdin: bytes = b"x"
                   ) -> tuple[int, bytes, str]:
    bundle = tmp / "bundle.pem"
    bundle.write_bytes(mesh.ca.trust_bundle().to_pem())
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{mesh.server_port}", "-tls1_3",
        "-alpn", "h2", "-CAfile", str(bundle), "-verify_return_error", "-quiet", *extra,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 20)
    assert proc.returncode is not None
    return proc.returncode, out, err.decode(errors="replace")


def handshake_errors(logs: list[dict[str, object]]) -> list[str]:
    return [str(e["error"]) for e in logs if e["event"] == "hbone.handshake_failed"]


@pytest.mark.anyio
async def test_no_client_certificate_is_refused(tmp_path: Path) -> None:
    async with hbone_mesh(tmp_path) as mesh:
        with structlog.testing.capture_logs() as logs:
            rc, out, _ = await s_client(mesh, tmp_path, [])
            await asyncio.sleep(0.1)
        assert rc != 0 and out == b""
        assert mesh.seen == []
        assert any("certificate" in e.lower() for e in handshake_errors(logs)), logs


@pytest.mark.anyio
async def test_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    rogue = new_ca(tmp_path / "rogue")
    ck, _ = mint(rogue, CLIENT_ID)  # same SPIFFE ID, wrong issuer
    async with hbone_mesh(tmp_path) as mesh:
        with structlog.testing.capture_logs() as logs:
            rc, out, _ = await s_client(mesh, tmp_path, write_identity(tmp_path / "c", ck))
            await asyncio.sleep(0.1)
        assert rc != 0 and out == b""
        assert mesh.seen == []
        errors = handshake_errors(logs)
        assert any("certificate verify failed" in e for e in errors), errors


@pytest.mark.anyio
async def test_expired_certificate_is_refused(tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    ca = new_ca(tmp_path / "ca", default_ttl=dt.timedelta(hours=1), clock=clock)
    expired, _ = mint(ca, CLIENT_ID)
    clock.now = dt.datetime.now(dt.UTC)
    async with hbone_mesh(tmp_path, ca=ca) as mesh:
        with structlog.testing.capture_logs() as logs:
            rc, out, _ = await s_client(mesh, tmp_path, write_identity(tmp_path / "c", expired))
            await asyncio.sleep(0.1)
        assert rc != 0 and out == b""
        assert mesh.seen == []
        errors = handshake_errors(logs)
        assert any("expired" in e for e in errors), errors


def connect_request(authority: str, payload: bytes) -> tuple[h2.connection.H2Connection, bytes]:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "CONNECT"), (":authority", authority)])
    conn.send_data(1, payload, end_stream=True)
    return conn, conn.data_to_send()


@pytest.mark.anyio
async def test_valid_certificate_server_sees_spiffe_identity(tmp_path: Path) -> None:
    async with hbone_mesh(tmp_path) as mesh, tcp_app(echo) as app_port:
        ck, _ = mint(mesh.ca, SpiffeId.for_workload("billing", "invoicer"))
        conn, request = connect_request(f"127.0.0.1:{app_port}", b"ping over openssl")
        bundle = tmp_path / "bundle.pem"
        bundle.write_bytes(mesh.ca.trust_bundle().to_pem())
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"127.0.0.1:{mesh.server_port}", "-tls1_3",
            "-alpn", "h2", "-CAfile", str(bundle), "-verify_return_error", "-quiet",
            *write_identity(tmp_path / "c", ck),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(request)
            await proc.stdin.drain()
            # s_client prints what the server sends: parse it as HTTP/2 until the
            # tunnel's END_STREAM (the app echoed and half-closed).
            status: list[bytes | None] = []
            data = b""
            ended = False
            async with asyncio.timeout(15):
                while not ended:
                    chunk = await proc.stdout.read(65536)
                    assert chunk, "s_client exited before the tunnel ended"
                    for ev in conn.receive_data(chunk):
                        if isinstance(ev, h2.events.ResponseReceived):
                            status.append(dict(ev.headers or []).get(b":status"))
                        elif isinstance(ev, h2.events.DataReceived) and ev.data:
                            data += ev.data
                        elif isinstance(ev, h2.events.StreamEnded):
                            ended = True
        finally:
            proc.kill()
            await proc.wait()
        assert len(mesh.seen) == 1
        assert mesh.seen[0].peer_identity == SpiffeId.for_workload("billing", "invoicer")
        assert mesh.seen[0].authority == f"127.0.0.1:{app_port}"
        assert status == [b"200"]
        assert data == b"ping over openssl"

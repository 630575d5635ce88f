"""Bad input to the HBONE server (the node proxy's port 15008), over real mutual TLS on
loopback: random CONNECT headers (method, :authority, extra pseudo-headers) and random
bytes after the handshake. Every request gets an answer or a reset within 5 s, the
server never dies, and a valid CONNECT still relays afterwards."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.hbone import HboneServer
from mesh.identity import tls
from mesh.identity.ca import CertificateAuthority
from tests.hbone_helpers import CLIENT_ID, SERVER_ID, echo, listen, relay_handler
from tests.identity_helpers import mint, new_ca

# make soak (AMBIENT_SOAK=1) runs ten times the examples.
SCALE = 10 if os.environ.get("AMBIENT_SOAK") == "1" else 1

FUZZ = settings(max_examples=120 * SCALE, deadline=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


class LoopbackHbone:
    """An HboneServer (the node proxy's inbound handler: dial the app, relay) and an
    echo app, on their own event loop in a background thread."""

    def __init__(self, tmp: Path) -> None:
        self.ca: CertificateAuthority = new_ca(tmp / "ca")
        server_ck, self.bundle = mint(self.ca, SERVER_ID)
        client_ck, _ = mint(self.ca, CLIENT_ID)
        self.client_ctx = tls.client_context(client_ck, self.bundle)
        server_ctx = tls.server_context(server_ck, self.bundle)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.lsock = listen()
        self.port = self.lsock.getsockname()[1]
        self.errors: list[BaseException] = []

        async def start() -> tuple[asyncio.Task[None], asyncio.Server]:
            app = await asyncio.start_server(echo, "127.0.0.1", 0)
            server = HboneServer(lambda: server_ctx, relay_handler())
            task = asyncio.ensure_future(server.serve(self.lsock))
            task.add_done_callback(self._died)
            return task, app
        self.task, self.app = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.app_port = self.app.sockets[0].getsockname()[1]

    def _died(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(task.exception())  # type: ignore[arg-type]

    @property
    def alive(self) -> bool:
        return not self.task.done()

    def close(self) -> None:
        async def stop() -> None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.app.close()
            await self.app.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        self.lsock.close()

    def dial(self, ctx: ssl.SSLContext | None = None) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return (ctx or self.client_ctx).wrap_socket(raw)


@pytest.fixture(scope="module")
def hbone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackHbone]:
    server = LoopbackHbone(tmp_path_factory.mktemp("hbone"))
    try:
        yield server
    finally:
        server.close()


def h2_client() -> h2.connection.H2Connection:
    return h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
        normalize_outbound_headers=False, validate_inbound_headers=False))


def exchange(hb: LoopbackHbone, headers: list[tuple[str, str]], payload: bytes = b""
             ) -> tuple[str, bytes]:
    """Send one request on a fresh connection; ("status NNN" | "reset" | "closed", data)."""
    with hb.dial() as sock:
        conn = h2_client()
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers, end_stream=False)
        if payload:
            conn.send_data(sid, payload)
        sock.sendall(conn.data_to_send())
        outcome, data = "closed", b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionError, ssl.SSLError, TimeoutError) as e:
                if isinstance(e, TimeoutError):
                    raise AssertionError(f"no answer within 5 s to {headers!r}") from None
                return outcome, data
            if not chunk:
                return outcome, data
            for ev in conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    status = {str(k): str(v) for k, v in ev.headers or []}.get(":status", "?")
                    outcome = "status " + status
                    if outcome != "status 200":
                        return outcome, data
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    data += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                    if payload and len(data) >= len(payload):
                        return outcome, data
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    return "reset", data
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    return "goaway", data
            sock.sendall(conn.data_to_send())


def assert_still_serving(hb: LoopbackHbone) -> None:
    outcome, data = exchange(hb, [(":method", "CONNECT"),
                                  (":authority", f"127.0.0.1:{hb.app_port}")], b"ping")
    assert (outcome, data) == ("status 200", b"ping"), outcome
    assert hb.alive and not hb.errors


def test_valid_connect_relays(hbone: LoopbackHbone) -> None:
    assert_still_serving(hbone)


AUTHORITY = st.one_of(
    st.text(max_size=60),
    st.from_regex(r"\A\d{1,4}\.\d{1,4}\.\d{1,4}\.\d{1,4}:\d{0,6}\Z"),
    st.from_regex(r"\A\[[0-9a-f:]{0,40}\]:\d{0,6}\Z"),
    st.sampled_from(["", ":", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:99999",
                     "localhost:80", "[::1]", "[::1]:1", "0.0.0.0:15008", "127.0.0.1:15008",
                     "a" * 5000, "127.0.0.1:80\r\nX: y", "%00:80"]))
METHOD = st.sampled_from(["CONNECT", "GET", "POST", "connect", "", "CONNECT "]) | st.text(
    max_size=10)
EXTRA = st.lists(st.tuples(st.sampled_from([":path", ":scheme", ":protocol", ":status",
                                            "x-forwarded-for", "baggage", "", "te"]),
                           st.text(max_size=30)), max_size=3)


@FUZZ
@given(method=METHOD, authority=AUTHORITY, extra=EXTRA)
def test_random_connect_headers_are_answered_never_crash(
        hbone: LoopbackHbone, method: str, authority: str,
        extra: list[tuple[str, str]]) -> None:
    headers = [(":method", method), (":authority", authority), *extra]
    outcome, _ = exchange(hbone, headers)
    assert outcome in ("status 200", "status 400", "status 405", "status 503", "reset",
                       "goaway", "closed"), outcome
    if method != "CONNECT" or any(k.startswith(":") for k, _ in extra):
        # Anything but a plain CONNECT (RFC 9113 8.5: no :path, no :scheme) is never
        # tunnelled.
        assert outcome != "status 200", headers
    assert hbone.alive and not hbone.errors


@settings(FUZZ, max_examples=60 * SCALE)
@given(data=st.binary(min_size=1, max_size=2000), preface=st.booleans())
def test_random_bytes_after_the_handshake_end_the_connection(
        hbone: LoopbackHbone, data: bytes, preface: bool) -> None:
    with hbone.dial() as sock:
        sock.settimeout(0.2)
        sock.sendall((b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" if preface else b"") + data)
        try:
            while sock.recv(65536):
                pass
        except (ConnectionError, ssl.SSLError):
            pass
        except TimeoutError:
            # The server may wait for the rest of a frame that claims more bytes: the
            # client then gives up, and that must cost the server nothing.
            pass
    assert hbone.alive and not hbone.errors


def test_still_serving_after_the_fuzzing(hbone: LoopbackHbone) -> None:
    assert_still_serving(hbone)

"""Bad input against the real `ambient-waypoint` process (plain listener, snapshot
file, a real backend): malformed -> 400, oversized head -> 431, slowloris -> 408 at
the 10 s head deadline, CL+TE smuggling -> 400 and the smuggled request never reaches
the backend, HTTP/2 garbage -> closed. Afterwards the same process still serves."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.waypoint_helpers import (
    Backend,
    BackendLoop,
    Waypoint,
    answer_name,
    host,
    run_waypoint,
    service,
    waypoint_snapshot,
)
from waypoint.http1 import HEAD_TIMEOUT, MAX_HEAD

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Waypoint, Backend]]:
    loop = BackendLoop()
    try:
        backend = loop.add(Backend("app"), answer_name)
        snap = waypoint_snapshot([service("app", 80, [backend.port])], [], [], [], [])
        with run_waypoint(snap, tmp_path_factory.mktemp("wp-input")) as wp:
            yield wp, backend
    finally:
        loop.close()


def raw(wp: Waypoint, data: bytes | list[bytes], gap: float = 0.0, limit: float = 20,
        ) -> tuple[bytes, float]:
    """Send bytes (pieces `gap` apart) and read until the waypoint closes."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", wp.port), timeout=limit) as s:
        answer = b""

        def reader() -> None:
            nonlocal answer
            try:
                while chunk := s.recv(65536):
                    answer += chunk
            except OSError:
                pass
        t = threading.Thread(target=reader)
        t.start()
        try:
            for piece in data if isinstance(data, list) else [data]:
                s.sendall(piece)
                time.sleep(gap)
        except OSError:
            pass
        t.join(limit)
        assert not t.is_alive(), f"no close within {limit} s"
    return answer, time.monotonic() - t0


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer[9:12])


APP = host("app")


def test_bad_input_gets_precise_answers_and_the_process_survives(
        setup: tuple[Waypoint, Backend]) -> None:
    wp, backend = setup
    results: dict[str, str] = {}
    slow: dict[str, object] = {}

    def slowloris() -> None:
        head = f"GET / HTTP/1.1\r\nHost: {APP}\r\nX-Slow: ".encode() + b"a" * 200
        answer, took = raw(wp, [head[i:i + 1] for i in range(len(head))], gap=0.06)
        slow.update(status=status(answer), took=took)
    t = threading.Thread(target=slowloris)
    t.start()
    cases = {
        "malformed request line": (b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
        "binary garbage": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" * 4, 400),
        "bad header name": (f"GET / HTTP/1.1\r\nHost: {APP}\r\nBad Header: 1\r\n\r\n"
                            .encode(), 400),
        "CL+TE smuggling": (f"POST / HTTP/1.1\r\nHost: {APP}\r\nContent-Length: 4\r\n"
                            f"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled "
                            f"HTTP/1.1\r\nHost: {APP}\r\n\r\n".encode(), 400),
        "TE obfuscated": (f"POST / HTTP/1.1\r\nHost: {APP}\r\nTransfer-Encoding: xchunked"
                          "\r\n\r\n0\r\n\r\n".encode(), 400),
        "two Content-Length": (f"POST / HTTP/1.1\r\nHost: {APP}\r\nContent-Length: 1\r\n"
                               "Content-Length: 2\r\n\r\nab".encode(), 400),
        "oversized header": (f"GET / HTTP/1.1\r\nHost: {APP}\r\nX-Big: ".encode()
                             + b"a" * (MAX_HEAD + 1) + b"\r\n\r\n", 431),
        "too many headers": (f"GET / HTTP/1.1\r\nHost: {APP}\r\n".encode()
                             + b"".join(b"x-%05d: 1\r\n" % i for i in range(8000))
                             + b"\r\n", 431),
    }
    for name, (payload, expected) in cases.items():
        answer, took = raw(wp, payload)
        got = status(answer)
        results[name] = f"{got} in {took * 1000:.0f} ms"
        assert got == expected, f"{name}: {answer[:120]!r}"
    # A SETTINGS frame whose length is not a multiple of 6: FRAME_SIZE_ERROR (GOAWAY).
    h2_garbage, _ = raw(wp, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x05\x04\x00"
                        b"\x00\x00\x00\x00" + b"\x01" * 5)
    results["HTTP/2 bad SETTINGS frame"] = f"{len(h2_garbage)} bytes (GOAWAY) then closed"
    t.join(HEAD_TIMEOUT + 10)
    results["slowloris (1 byte / 60 ms)"] = f"{slow.get('status')} after " \
                                             f"{float(slow.get('took', 0)):.1f} s"  # type: ignore[arg-type]
    for name, outcome in results.items():
        print(f"{name}: {outcome}")
    assert slow.get("status") == 408
    assert HEAD_TIMEOUT <= float(slow["took"]) < HEAD_TIMEOUT + 3  # type: ignore[arg-type]
    assert not any("smuggled" in k for k in backend.hits), backend.hits
    assert wp.proc.poll() is None, "the waypoint died"
    r = httpx.get(wp.url, headers={"host": APP}, timeout=5)
    assert r.status_code == 200 and r.text == "app"


def test_logs_have_no_traceback(setup: tuple[Waypoint, Backend]) -> None:
    wp, _ = setup
    stderr = Path(wp.access_log).with_name("waypoint.stderr").read_text(errors="replace")
    assert "Traceback" not in stderr, stderr[-3000:]

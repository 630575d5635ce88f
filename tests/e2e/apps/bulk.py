"""A checksummed bulk TCP app for e2e tests, both ends.

  python bulk.py serve PORT
      Per connection: read a header line "<n>\\n", then everything until the client's
      half-close (EOF), hashing it; answer the sha256 hex (64 bytes) of what it read,
      then <n> bytes of a stream derived from b"down", then close.
  python bulk.py send HOST PORT UP DOWN
      Connect, send the header, UP bytes of a stream derived from b"up", half-close;
      read the answer until EOF. Prints one JSON line: what was sent and received
      and whether both checksums match.
  python bulk.py hold HOST PORT
      Connect, send "ping", read the echo... then wait for the connection to end and
      print how it ended (JSON: "reset" | "eof" | "timeout") — a live connection a
      policy change is expected to cut.
  python bulk.py echo PORT
      Echo server (for `hold`).
"""

import hashlib
import json
import socket
import sys
import threading

BLOCK = 1 << 20


def stream(seed: bytes, total: int):  # type: ignore[no-untyped-def]
    block = hashlib.sha256(seed).digest() * (BLOCK // 32)
    sent = 0
    while sent < total:
        chunk = block[: min(BLOCK, total - sent)]
        sent += len(chunk)
        yield chunk


def listener(port: int) -> socket.socket:
    srv = socket.socket(socket.AF_INET6)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", port))
    srv.listen(64)
    return srv


def serve_one(conn: socket.socket) -> None:
    with conn:
        header = b""
        while not header.endswith(b"\n"):
            byte = conn.recv(1)
            if not byte:
                return
            header += byte
        down = int(header)
        digest = hashlib.sha256()
        while data := conn.recv(BLOCK):
            digest.update(data)
        conn.sendall(digest.hexdigest().encode())
        for chunk in stream(b"down", down):
            conn.sendall(chunk)


def echo_one(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def serve(port: int, handler) -> None:  # type: ignore[no-untyped-def]
    srv = listener(port)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def send(host: str, port: int, up: int, down: int) -> None:
    sock = socket.create_connection((host, port), timeout=60)
    sent = hashlib.sha256()
    sock.sendall(f"{down}\n".encode())
    for chunk in stream(b"up", up):
        sock.sendall(chunk)
        sent.update(chunk)
    sock.shutdown(socket.SHUT_WR)
    answer = b""
    while len(answer) < 64:
        data = sock.recv(64 - len(answer))
        if not data:
            break
        answer += data
    got, total = hashlib.sha256(), 0
    while data := sock.recv(BLOCK):
        got.update(data)
        total += len(data)
    expected = hashlib.sha256()
    for chunk in stream(b"down", down):
        expected.update(chunk)
    print(json.dumps({"up_ok": answer.decode() == sent.hexdigest(), "down_bytes": total,
                      "down_ok": got.hexdigest() == expected.hexdigest()}))


def hold(host: str, port: int) -> None:
    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(b"ping")
    assert sock.recv(4) == b"ping"
    print(json.dumps({"state": "open"}), flush=True)
    sock.settimeout(30)
    try:
        ended = "eof" if sock.recv(1) == b"" else "data"
    except ConnectionResetError:
        ended = "reset"
    except TimeoutError:
        ended = "timeout"
    print(json.dumps({"state": ended}), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve":
        serve(int(sys.argv[2]), serve_one)
    elif mode == "echo":
        serve(int(sys.argv[2]), echo_one)
    elif mode == "send":
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        hold(sys.argv[2], int(sys.argv[3]))

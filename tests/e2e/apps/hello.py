"""A tiny HTTP/1.1 server for e2e tests: answers `hello from <pod>` and echoes POST bodies.

Usage: python hello.py PORT
"""

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, body: bytes) -> None:
        # One write for head and body: two small writes meet Nagle + delayed ACK (40 ms).
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        self.wfile.write(head + body)

    def do_GET(self) -> None:
        self._reply(f"hello from {os.environ.get('POD_NAME', '?')}\n".encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self._reply(self.rfile.read(length))

    def log_message(self, format: str, *args: object) -> None:
        pass


class DualStackServer(ThreadingHTTPServer):
    address_family = 10  # AF_INET6, accepting v4 too

    def server_bind(self) -> None:
        import socket

        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


DualStackServer(("::", int(sys.argv[1])), Handler).serve_forever()

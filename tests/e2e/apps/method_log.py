"""An HTTP/1.1 server that answers every method (DELETE too) with 200 and prints one
line per request it receives, `REQUEST <METHOD> <path>`, flushed: the app's own record
of what reached it, which tests count.

Usage: python method_log.py PORT
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _any(self) -> None:
        print(f"REQUEST {self.command} {self.path}", flush=True)
        length = int(self.headers.get("Content-Length", "0"))
        if length:
            self.rfile.read(length)
        body = f"{self.command} reached the app\n".encode()
        self.wfile.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                         + body)

    do_GET = do_DELETE = do_POST = do_PUT = _any

    def log_message(self, format: str, *args: object) -> None:
        pass


class DualStackServer(ThreadingHTTPServer):
    address_family = 10  # AF_INET6, accepting v4 too
    daemon_threads = True

    def server_bind(self) -> None:
        import socket

        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


DualStackServer(("::", int(sys.argv[1])), Handler).serve_forever()

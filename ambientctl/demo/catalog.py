"""Catalog service: answers HTTP with its version, so a canary split is visible."""

from __future__ import annotations

import argparse
import json
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DualStackServer(ThreadingHTTPServer):
    """Listens on :: and so on every IPv4 and IPv6 address of the pod."""

    address_family = socket.AF_INET6
    daemon_threads = True

ITEMS = ["teapot", "kettle", "mug"]


def make_handler(version: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Buffered writes: head and body leave in one segment (two small writes meet
        # Nagle + delayed ACK on a kept-alive connection: 40 ms per response).
        wbufsize = 1 << 16

        protocol_version = "HTTP/1.1"

        def _send(self, code: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode() + b"\n"
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-catalog-version", version)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, {"ok": True})
                return
            self._send(200, {"service": "catalog", "version": version, "items": ITEMS,
                             "pod": socket.gethostname(),
                             "routed_by": self.headers.get("x-routed-by", "")})

        def do_DELETE(self) -> None:
            self._send(200, {"service": "catalog", "version": version, "deleted": self.path})

        def log_message(self, format: str, *args: object) -> None:
            print(f"catalog {version}: {self.address_string()} {format % args}", flush=True)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--version", default="v1")
    args = parser.parse_args()
    server = DualStackServer(("::", args.port), make_handler(args.version))
    print(f"catalog {args.version} listening on :{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

"""Frontend: for each request, fetches the catalog over HTTP and each item's stock over
the inventory's TCP protocol, and answers with both (and which catalog version
served it)."""

from __future__ import annotations

import argparse
import json
import socket
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DualStackServer(ThreadingHTTPServer):
    """Listens on :: and so on every IPv4 and IPv6 address of the pod."""

    address_family = socket.AF_INET6
    daemon_threads = True


def stock(address: tuple[str, int], items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    with socket.create_connection(address, timeout=5) as sock, sock.makefile("rw") as f:
        for item in items:
            f.write(f"STOCK {item}\n")
            f.flush()
            name, _, count = f.readline().strip().partition(" ")
            out[name] = int(count or 0)
    return out


def make_handler(catalog_url: str, inventory: tuple[str, int]) -> type[BaseHTTPRequestHandler]:
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
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, {"ok": True})
                return
            try:
                with urllib.request.urlopen(catalog_url, timeout=5) as resp:
                    catalog = json.loads(resp.read())
                counts = stock(inventory, list(catalog.get("items", [])))
            except (OSError, ValueError) as e:
                self._send(502, {"error": f"upstream failed: {e}"})
                return
            self._send(200, {"catalog_version": catalog.get("version"), "stock": counts,
                             "frontend": socket.gethostname()})

        def log_message(self, format: str, *args: object) -> None:
            print(f"frontend: {self.address_string()} {format % args}", flush=True)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--catalog", default="http://catalog.demo/items")
    parser.add_argument("--inventory", default="inventory.demo:9000")
    args = parser.parse_args()
    host, _, port = args.inventory.rpartition(":")
    server = DualStackServer(("::", args.port), make_handler(args.catalog, (host, int(port))))
    print(f"frontend listening on :{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

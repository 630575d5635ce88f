"""Inventory service: a line-based TCP protocol (`STOCK <item>` -> `<item> <count>`),
so the demo has plain L4 traffic that only the node proxies see."""

from __future__ import annotations

import argparse
import socket
import socketserver

STOCK = {"teapot": 12, "kettle": 3, "mug": 48}


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for raw in self.rfile:
            words = raw.decode(errors="replace").split()
            if not words:
                continue
            if words[0].upper() == "PING":
                reply = "PONG"
            elif words[0].upper() == "STOCK" and len(words) == 2:
                reply = f"{words[1]} {STOCK.get(words[1], 0)}"
            else:
                reply = "ERR usage: STOCK <item> | PING"
            self.wfile.write(reply.encode() + b"\n")
            self.wfile.flush()


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    address_family = socket.AF_INET6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    with Server(("::", args.port), Handler) as server:
        print(f"inventory listening on :{args.port}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()

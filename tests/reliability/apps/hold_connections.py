"""An attacker inside a pod: open N connections, hold them, then report how many the
mesh has already closed (JSON on stdout), and keep the rest open a while longer.

Usage: hold_connections.py HOST PORT N HOLD_SECONDS LINGER_SECONDS
A connection reset while it is being opened (refused before the handshake finished)
counts as opened and closed."""

from __future__ import annotations

import json
import select
import socket
import sys
import time


def main() -> None:
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    hold, linger = float(sys.argv[4]), float(sys.argv[5])
    socks, reset_at_connect = [], 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.settimeout(5)
        try:
            s.connect((host, port))
        except ConnectionResetError:
            reset_at_connect += 1
            s.close()
            continue
        socks.append(s)
    time.sleep(hold)
    closed = 0
    for s in socks:
        if select.select([s], [], [], 0)[0]:
            try:
                closed += s.recv(1) == b""
            except OSError:
                closed += 1
    print(json.dumps({"opened": len(socks) + reset_at_connect,
                      "still_open": len(socks) - closed}), flush=True)
    time.sleep(linger)


if __name__ == "__main__":
    main()

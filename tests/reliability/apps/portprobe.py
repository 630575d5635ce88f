"""Knock on many ports from inside a pod and say what each did (stdlib only).

Usage: python portprobe.py PAYLOAD_HEX HOST PORT [PORT...]   -> one JSON list on stdout:
[{"host", "port", "outcome": refused|reset|closed|timeout|data, "data": first bytes}]
"""

from __future__ import annotations

import json
import socket
import sys
from concurrent.futures import ThreadPoolExecutor


def knock(host: str, port: int, payload: bytes) -> dict[str, object]:
    result: dict[str, object] = {"host": host, "port": port, "data": ""}
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(payload)
            data = s.recv(4096)
            result["outcome"] = "data" if data else "closed"
            result["data"] = data[:200].decode("latin-1")
    except ConnectionRefusedError:
        result["outcome"] = "refused"
    except ConnectionResetError:
        result["outcome"] = "reset"
    except TimeoutError:
        result["outcome"] = "timeout"
    except OSError as e:
        result["outcome"] = f"error {e.errno}"
    return result


def main() -> int:
    payload = bytes.fromhex(sys.argv[1])
    host = sys.argv[2]
    ports = [int(p) for p in sys.argv[3:]]
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda p: knock(host, p, payload), ports))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

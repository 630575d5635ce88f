"""A traffic generator run inside a pod: N HTTP requests (or TCP exchanges), then one
JSON summary line on stdout that the caller can parse (status codes, versions seen,
latencies)."""

from __future__ import annotations

import argparse
import json
import socket
import time
import urllib.error
import urllib.request
from collections import Counter


def http_round(url: str, method: str, timeout: float) -> tuple[str, str]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
            code = str(resp.status)
    except urllib.error.HTTPError as e:
        return str(e.code), ""
    except OSError as e:
        return f"error: {getattr(e, 'reason', e)}", ""
    try:
        data = json.loads(body)
    except ValueError:
        return code, ""
    version = data.get("version") or data.get("catalog_version") or ""
    return code, str(version)


def tcp_round(address: str, timeout: float) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(b"PING\n")
            reply = sock.makefile().readline().strip()
    except OSError as e:
        return f"error: {e.strerror or e}", ""
    return ("ok" if reply == "PONG" else f"bad reply {reply!r}"), ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", help="http://... URL, or host:port with --tcp")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--tcp", action="store_true")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    codes: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    latencies = []
    for _ in range(args.count):
        t0 = time.monotonic()
        if args.tcp:
            code, version = tcp_round(args.target, args.timeout)
        else:
            code, version = http_round(args.target, args.method, args.timeout)
        latencies.append((time.monotonic() - t0) * 1000)
        codes[code] += 1
        if version:
            versions[version] += 1
    latencies.sort()
    print(json.dumps({
        "target": args.target, "count": args.count, "codes": dict(codes),
        "versions": dict(versions),
        "p50_ms": round(latencies[len(latencies) // 2], 2) if latencies else None,
    }), flush=True)


if __name__ == "__main__":
    main()

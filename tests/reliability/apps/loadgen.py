"""Steady load from inside a pod: every request's result is one JSON line.

Runs with the standard library only (it is started as a pod's process). Each worker
sends HTTP/1.1 GETs on a new connection at a fixed pace; a request may be retried
client-side (`--retries`), and the line says how many attempts it took and why the
first ones failed, so a report can count first-try failures honestly.

Usage: python loadgen.py --url URL --out FILE [--rate 40] [--workers 4]
       [--duration 20] [--timeout 2] [--retries 0] [--retry-gap 0.2] [--expect TEXT]
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import threading
import time
import urllib.parse


def one_attempt(url: urllib.parse.SplitResult, timeout: float, expect: str
                ) -> tuple[bool, int, str]:
    """(ok, status, error) of one GET on a fresh connection."""
    conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=timeout)
    try:
        conn.request("GET", url.path or "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        if resp.status != 200:
            return False, resp.status, f"HTTP {resp.status}: {body[:80].strip()}"
        if expect and expect not in body:
            return False, resp.status, f"unexpected body {body[:80]!r}"
        return True, resp.status, ""
    except Exception as e:  # every failure is a result, recorded with its type
        return False, 0, f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--rate", type=float, default=40.0, help="requests/s, all workers")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--retries", type=int, default=0)
    p.add_argument("--retry-gap", type=float, default=0.2)
    p.add_argument("--expect", default="")
    a = p.parse_args()
    url = urllib.parse.urlsplit(a.url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = threading.Lock()
    out = open(a.out, "w", buffering=1)  # noqa: SIM115 - closed at the end of main
    start = time.monotonic()
    period = a.workers / a.rate

    def worker(index: int) -> None:
        due = start + index * period / a.workers
        while not stop.is_set():
            now = time.monotonic()
            if now - start >= a.duration:
                return
            if due > now:
                time.sleep(due - now)
            due += period
            t0 = time.monotonic()
            errors: list[str] = []
            status = 0
            ok = False
            for _attempt in range(a.retries + 1):
                ok, status, error = one_attempt(url, a.timeout, a.expect)
                if ok:
                    break
                errors.append(error)
                if stop.is_set():
                    break
                time.sleep(a.retry_gap)
            line = json.dumps({"t": round(t0 - start, 3), "ok": ok, "status": status,
                               "attempts": len(errors) + (1 if ok else 0),
                               "errors": errors, "ms": round((time.monotonic() - t0) * 1000, 1)})
            with lock:
                out.write(line + "\n")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

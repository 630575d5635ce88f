"""eBPF capture costs: connect() latency with and without the programs, and the time
to enroll 100 pods. `python -m bench.ebpf [--connects N] [--pods N]` (root).

connect() is timed inside a pod (a blocking connect returns once the SYN-ACK is in,
so this is the handshake plus every hook on the way) against a listener that only
accepts and closes (it closes first, so TIME_WAIT never piles up on the client). Cases:
  direct      client pod -> server pod over the node bridge, no programs loaded
  loopback    client pod -> 127.0.0.1:15001 in its own netns, no programs loaded
  attached    `direct` with the programs attached at the node cgroup, pod not enrolled
  captured    the pod enrolled: connect(server ip) rewritten to 127.0.0.1:15001
Ratios: attached/direct = cost for traffic we do not touch; captured/loopback = cost of
capture on the path the captured connection really takes.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

SCRIPT = str(Path(__file__).resolve())


def _client(dst: str, port: int, count: int) -> None:
    """Runs inside a pod: time `count` connects (after a warm-up), print µs stats."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    samples = []
    for i in range(count + 200):
        s = socket.socket(family, socket.SOCK_STREAM)
        t0 = time.perf_counter_ns()
        s.connect((dst, port))
        t1 = time.perf_counter_ns()
        # Wait for the server's FIN so TIME_WAIT stays on its side: otherwise thousands
        # of client TIME_WAITs to one destination slow down port selection in connect()
        # and the later cases would pay for the earlier ones.
        s.recv(1)
        s.close()
        if i >= 200:
            samples.append((t1 - t0) / 1000)
    samples.sort()
    print(json.dumps({
        "mean_us": round(statistics.fmean(samples), 1),
        "p50_us": round(samples[len(samples) // 2], 1),
        "p99_us": round(samples[int(len(samples) * 0.99)], 1),
        "n": len(samples),
    }))


def _server(host: str, port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(4096)
    print("ready", flush=True)
    while True:
        conn, _ = s.accept()
        conn.close()


class _Acceptor:
    """The node proxy's stand-in: a listener inside a pod netns, accept-and-close."""

    def __init__(self, netns: str, port: int) -> None:
        from mesh.runtime.netns import in_netns

        with in_netns(netns):
            self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(4096)
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()


def _measure(rt: Any, pod: Any, dst: str, port: int, count: int) -> dict[str, Any]:
    done = rt.run(pod, [sys.executable, SCRIPT, "client", dst, str(port), str(count)],
                  timeout=300)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return dict(json.loads(done.stdout))


def _round(rt: Any, pin: str, node: Any, client: Any, srv: Any,
           connects: int) -> tuple[dict[str, Any], float]:
    """One pass over the four cases: programs absent, then attached, then enrolled."""
    from ebpf import EnrolledPod, Redirector, uninstall

    out = {
        "direct": _measure(rt, client, str(srv.ip), 8080, connects),
        "loopback": _measure(rt, client, "127.0.0.1", 15001, connects),
    }
    t0 = time.perf_counter()
    redirector = Redirector.load(pin, node.cgroup_path)
    load_s = time.perf_counter() - t0
    try:
        out["attached"] = _measure(rt, client, str(srv.ip), 8080, connects)
        redirector.enroll(EnrolledPod(name="bench/client", netns=client.netns,
                                      cgroup_path=client.cgroup_path))
        out["captured"] = _measure(rt, client, str(srv.ip), 8080, connects)
    finally:
        redirector.close()
        uninstall(pin)
    return out, load_s


def _enroll_many(rt: Any, pin: str, node: Any, pods: int) -> dict[str, Any]:
    from ebpf import EnrolledPod, Redirector, uninstall

    many = [rt.create_pod("n1", "fleet", f"p{i}") for i in range(pods)]
    records = [EnrolledPod(name=f"fleet/{p.name}", netns=p.netns, cgroup_path=p.cgroup_path,
                           ips=(str(p.ip), str(p.ip6))) for p in many]
    redirector = Redirector.load(pin, node.cgroup_path)
    try:
        t0 = time.perf_counter()
        for record in records:
            redirector.enroll(record)
        enroll_s = time.perf_counter() - t0
        enrolled = redirector.status()["inbound_links_attached"]
        t0 = time.perf_counter()
        for record in records:
            redirector.unenroll(record)
        unenroll_s = time.perf_counter() - t0
    finally:
        redirector.close()
        uninstall(pin)
    return {"pods": pods, "inbound_links_attached": enrolled,
            "total_ms": round(enroll_s * 1000, 1),
            "per_pod_ms": round(enroll_s * 1000 / pods, 3),
            "unenroll_total_ms": round(unenroll_s * 1000, 1)}


def run(connects: int, pods: int, rounds: int) -> dict[str, Any]:
    from ebpf import uninstall
    from mesh.runtime import LocalRuntime

    cluster = "ambench" + secrets.token_hex(2)
    rt = LocalRuntime(cluster=cluster)
    pin = f"{cluster}-n1"
    server = None
    try:
        node = rt.create_node("n1")
        client = rt.create_pod("n1", "bench", "client")
        srv = rt.create_pod("n1", "bench", "server")
        server = rt.spawn(srv, [sys.executable, SCRIPT, "server", str(srv.ip), "8080"],
                          stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        _Acceptor(client.netns, 15001)
        per_round = []
        loads = []
        for _ in range(rounds):
            result, load_s = _round(rt, pin, node, client, srv, connects)
            per_round.append(result)
            loads.append(load_s)
        cases = ("direct", "loopback", "attached", "captured")
        p50 = {c: round(statistics.median(r[c]["p50_us"] for r in per_round), 1) for c in cases}
        mean = {c: round(statistics.median(r[c]["mean_us"] for r in per_round), 1)
                for c in cases}
        return {
            "connects_per_case_per_round": connects,
            "rounds": rounds,
            "p50_us_median_of_rounds": p50,
            "mean_us_median_of_rounds": mean,
            "ratio_attached_vs_direct_p50": round(p50["attached"] / p50["direct"], 3),
            "ratio_captured_vs_loopback_p50": round(p50["captured"] / p50["loopback"], 3),
            "agent_load_s": [round(x, 3) for x in loads],
            "enroll": _enroll_many(rt, pin, node, pods),
            "per_round": per_round,
        }
    finally:
        if server is not None:
            server.kill()
            server.wait()
        uninstall(pin)
        rt.destroy()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "client":
        _client(argv[1], int(argv[2]), int(argv[3]))
        return
    if argv and argv[0] == "server":
        _server(argv[1], int(argv[2]))
        return
    p = argparse.ArgumentParser(prog="python -m bench.ebpf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connects", type=int, default=2000,
                   help="timed connects per case and round")
    p.add_argument("--pods", type=int, default=100, help="pods to enroll")
    p.add_argument("--rounds", type=int, default=5, help="passes over the four cases")
    args = p.parse_args(argv)
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(30))
    print(json.dumps(run(args.connects, args.pods, args.rounds), indent=2))


if __name__ == "__main__":
    main()

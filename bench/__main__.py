"""`python -m bench` (what `make bench` runs): every scenario, side by side with direct
traffic and an Envoy pair, in one local mesh; rewrites the generated section of
bench/RESULTS.md, bench/results.json and bench/results.png.

Needs root (network namespaces, eBPF). Takes about 5 minutes on a 2-core machine.
Other benchmarks: python -m bench.hbone | bench.ebpf | bench.controlplane."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCENARIOS = ["rr", "connect", "bulk", "l7", "memory", "controlplane"]


def machine_facts() -> dict[str, Any]:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import uvloop

    from bench.envoy import BINARY
    version = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "uvloop": uvloop.__version__,
            "openssl": ssl.OPENSSL_VERSION, "envoy": _envoy_version(version),
            "load_before": _load()}


def _envoy_version(text: str) -> str:
    found = re.search(r"/(\d+\.\d+\.\d+)/\w+/\w+/(\w+)", text)
    return f"{found.group(1)} ({found.group(2)})" if found else text


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def controlplane(services: int) -> str:
    out = subprocess.run([sys.executable, "-m", "bench.controlplane", "--services",
                          str(services), "--rounds", "3"], capture_output=True, text=True,
                         timeout=600, cwd=HERE.parent)
    if out.returncode != 0:
        raise RuntimeError(f"bench.controlplane failed: {out.stderr[-2000:]}")
    lines = [ln for ln in out.stdout.splitlines() if not ln.startswith("20")]  # drop logs
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench import l4, l7, memory
    from bench.topology import BenchTopology

    def wanted(scenario: str) -> bool:
        return scenario not in args.skip and (not args.only or scenario in args.only)

    started = time.monotonic()
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M %Z"),
                           "command": args.command, "machine": machine_facts()}
    opts = l4.L4Options(rate_seconds=args.seconds, saturation_seconds=args.seconds * 0.6,
                        bulk_mib=args.bulk_mib, connect_samples=args.connects)
    topo = BenchTopology()
    try:
        topo.start()
        print("topology up", flush=True)
        rss_idle = memory.rss_mb(topo.agent_pid("node-2"))
        res["l4"] = {}
        if wanted("rr"):
            res["l4"]["rr"] = l4.request_response(topo, opts)
            print("1. request/response done", flush=True)
        if wanted("connect"):
            res["l4"]["connect"] = l4.new_connections(topo, opts)
            print("2. new connections done", flush=True)
        if wanted("bulk"):
            res["l4"]["bulk"] = l4.bulk(topo, opts)
            print("3. bulk done", flush=True)
        if wanted("l7"):
            res["l7"] = l7.run(topo, seconds=int(args.seconds))
            print("4. L7 done", flush=True)
        if wanted("memory"):
            counts = (1, 10, args.pods)
            node = memory.node_proxy(topo, counts)
            node["rss_mb_before_traffic_1_pod"] = round(rss_idle, 1)
            res["memory"] = {"node_proxy": node,
                             "cold_tunnels": memory.cold_tunnels(topo, args.pods)}
            print("5. memory (mesh) done", flush=True)
    finally:
        topo.close()
    if wanted("memory"):
        with tempfile.TemporaryDirectory(prefix="ambient-bench-sidecars-") as tmp:
            res["memory"]["envoy_sidecars_mb"] = memory.envoy_sidecars(Path(tmp),
                                                                       (1, 10, args.pods))
        print("5. memory (envoy) done", flush=True)
    if wanted("controlplane"):
        res["controlplane"] = controlplane(1000)
        print("6. control plane done", flush=True)
    res["machine"]["load_after"] = _load()
    res["elapsed_s"] = time.monotonic() - started
    return res


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8.0,
                   help="measured seconds per fixed-rate run (saturation: 0.6x)")
    p.add_argument("--bulk-mib", type=int, default=512)
    p.add_argument("--connects", type=int, default=300)
    p.add_argument("--pods", type=int, default=100, help="largest enrolled-pod count")
    p.add_argument("--skip", nargs="*", default=[], choices=SCENARIOS)
    p.add_argument("--only", nargs="*", default=[], choices=SCENARIOS,
                   help="run just these (e.g. --only l7); a partial run implies --no-write")
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--no-write", action="store_true",
                   help="leave RESULTS.md, results.json and the chart alone")
    p.add_argument("--json", type=Path, help="also write this run's results here")
    args = p.parse_args()
    if args.only or {"rr", "connect", "bulk"} & set(args.skip):
        args.no_write = True  # a partial run must not replace the full side-by-side section
    args.command = "make bench" if os.environ.get("MAKELEVEL") else \
        "python -m bench " + shlex.join(sys.argv[1:])
    if os.geteuid() != 0:
        sys.exit("python -m bench needs root (network namespaces, eBPF): run it with sudo")
    import logging

    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    res = run(args)
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    if not args.no_write:
        from bench import report
        (HERE / "results.json").write_text(json.dumps(res, indent=1) + "\n")
        report.chart(HERE / "results.png", res)
        report.write_results_md(args.out, res)
        print(f"wrote {args.out}, {HERE / 'results.png'}, {HERE / 'results.json'}")


if __name__ == "__main__":
    main()

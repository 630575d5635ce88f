"""Profile the node proxies under one bench workload with py-spy (sampling, native
frames off): `python -m bench.profile [rr|bulk|l7|connect] [--seconds 8]`.

Starts the bench topology, runs the workload from the mesh client, records both node
agents (node-1 = outbound side, node-2 = inbound side) and prints, per agent, the
functions with the most samples on-CPU by themselves (self) and with callees
(total). With --keep DIR the collapsed stacks are copied there (for flame graphs)."""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from bench.topology import ECHO, SINK, BenchTopology

PY_SPY = Path(sys.executable).parent / "py-spy"


def top(collapsed: Path, n: int = 25) -> str:
    self_count: collections.Counter[str] = collections.Counter()
    total_count: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        samples += c
        frames = stack.split(";")
        self_count[frames[-1]] += c
        for f in set(frames):
            total_count[f] += c
    rows = [f"{samples} samples", "self:"]
    rows += [f"  {c * 100 / samples:5.1f}%  {f}" for f, c in self_count.most_common(n)]
    rows.append("total:")
    rows += [f"  {c * 100 / samples:5.1f}%  {f}" for f, c in total_count.most_common(n)
             if "<module>" not in f and "run (" not in f]
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("workload", choices=["rr", "bulk", "l7", "connect"], nargs="?", default="rr")
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--rate", type=int, default=0, help="rr: requests/s (0: saturate)")
    p.add_argument("--keep", type=Path, help="copy the collapsed stacks into this directory")
    p.add_argument("--native", action="store_true",
                   help="py-spy --native: C frames too (OpenSSL, uvloop, httptools)")
    args = p.parse_args()
    topo = BenchTopology()
    try:
        topo.start()
        if args.workload == "l7":
            from bench import l7
            l7.setup_waypoint(topo)
        work = {
            "rr": ["rr", topo.target("mesh", ECHO), "--conns", str(args.conns),
                   "--duration", str(args.seconds + 4), "--warmup", "1",
                   "--rate", str(args.rate)],
            "bulk": ["bulk", topo.target("mesh", SINK), str(400 * args.seconds)],
            "connect": ["connect", topo.target("mesh", ECHO), "--rounds",
                        str(400 * args.seconds)],
        }
        results: list[object] = []

        def load() -> None:
            if args.workload == "l7":
                results.append(topo.run_text(topo.client("mesh"), [
                    "wrk", "-t2", f"-c{args.conns}", f"-d{args.seconds + 4}s",
                    "http://web.bench/"], timeout=120))
            else:
                results.append(topo.run_client("mesh", work[args.workload], timeout=300))

        t = threading.Thread(target=load)
        t.start()
        outs = {}
        procs = []
        for node in ("node-1", "node-2"):
            out = topo.workdir / f"{node}.collapsed"
            outs[node] = out
            procs.append(subprocess.Popen(
                [str(PY_SPY), "record", "--pid", str(topo.agent_pid(node)), "--rate", "250",
                 "--duration", str(args.seconds), "--format", "raw", "--output", str(out),
                 "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if args.workload == "l7":
            wp = topo.workdir / "waypoint.collapsed"
            outs["waypoint"] = wp
            pid = _waypoint_pid(topo)
            procs.append(subprocess.Popen(
                [str(PY_SPY), "record", "--pid", str(pid), "--rate", "250", "--duration",
                 str(args.seconds), "--format", "raw", "--output", str(wp),
                 *(["--native"] if args.native else ["--nonblocking"])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for proc in procs:
            proc.wait()
        t.join()
        print("workload result:", results)
        for node, out in outs.items():
            print(f"===== {node}")
            print(top(out))
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(out, args.keep / out.name)
    finally:
        topo.close()


def _waypoint_pid(topo: BenchTopology) -> int:
    pod = topo.pod("bench", "waypoint")
    procs = (pod.cgroup_path / "cgroup.procs").read_text().split()
    for pid in procs:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"waypoint" in cmd:
            return int(pid)
    raise RuntimeError(f"no waypoint process in {pod.key}")


if __name__ == "__main__":
    main()

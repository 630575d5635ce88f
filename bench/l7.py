"""Scenario 4: HTTP/1.1 keep-alive rate and latency at 64 connections, with wrk.

  direct      plain/client -> plain/server:7002
  mesh        bench/client -> web.bench:80 (service VIP) -> node proxy -> HBONE ->
              waypoint (route) -> HBONE -> node proxy -> bench/server:7002
  mesh_l4     bench/client -> bench/server:7002 (pod IP: HBONE, no waypoint), for scale
  envoy       plain/client -> client-side Envoy (HTTP connection manager, one route)
              -> mTLS -> server-side Envoy (tcp_proxy) -> plain/server:7002
The mesh crosses three proxies (two node proxies and the waypoint) where the Envoy
sidecar pair crosses two: that is ambient's L7 design, not a bench artefact."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from bench.topology import HTTP, BenchTopology, waypoint_yaml
from mesh.runtime import PodNotFound

_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def parse_wrk(text: str) -> dict[str, Any]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk output: {text[-500:]}")
    lat: dict[str, float] = {}
    for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        lat[f"p{pct}"] = round(float(value) * _UNITS[unit], 1)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock_err = re.search(r"Socket errors:(.*)", text)
    return {"rps": float(rps.group(1)), "latency_us": lat,
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": sock_err.group(1).strip() if sock_err else ""}


def setup_waypoint(topo: BenchTopology) -> None:
    topo.mesh.apply(waypoint_yaml(), file="waypoint.yaml")
    client = topo.client("mesh")

    def answers() -> bool:
        out = topo.mesh.exec(client, ["curl", "-sS", "-m", "3", "-D", "-",
                                      "http://web.bench/"], timeout=10)
        return out.returncode == 0 and "hello world" in out.stdout

    def through_waypoint() -> bool:
        # Until the waypoint pod runs, the node proxy sends web.bench straight to the
        # server (L4): an answer alone does not prove the waypoint is in the path.
        before = waypoint_requests(topo)
        return answers() and waypoint_requests(topo) > before
    topo.wait("web.bench through the waypoint", through_waypoint, timeout=120)


def waypoint_requests(topo: BenchTopology) -> int:
    """istio_requests_total reported by the waypoint: proof the mesh row used it."""
    total = 0
    for line in _waypoint_metrics(topo).splitlines():
        if line.startswith("istio_requests_total{"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def _waypoint_metrics(topo: BenchTopology) -> str:
    try:
        pod = topo.pod("bench", "waypoint")
    except PodNotFound:
        return ""  # not created yet: no requests counted
    out = topo.mesh.exec(pod, ["curl", "-sS", "-m", "3", f"http://{pod.ip}:15020/metrics"],
                         timeout=10)
    return out.stdout


def waypoint_pid(topo: BenchTopology) -> int:
    pod = topo.pod("bench", "waypoint")
    for pid in (pod.cgroup_path / "cgroup.procs").read_text().split():
        if b"waypoint" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(pid)
    raise RuntimeError(f"no waypoint process in {pod.key}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(topo: BenchTopology, seconds: int = 10, conns: int = 64, threads: int = 2,
        rounds: int = 2) -> dict[str, Any]:
    """Every path once per round, one after another, keeping each path's best round
    (as the L4 scenarios do: the machine is shared, and a burst of other work in one
    run would otherwise decide the ratio). For the waypoint row also its own CPU time
    per request in that round: a figure other load disturbs far less than the rate."""
    setup_waypoint(topo)
    urls = {
        "direct": f"http://{topo.target('direct', HTTP)}/",
        "mesh": "http://web.bench/",
        "mesh_l4": f"http://{topo.target('mesh', HTTP)}/",
        "envoy": f"http://{topo.target('envoy', HTTP)}/",
    }
    before = waypoint_requests(topo)
    pid = waypoint_pid(topo)
    out: dict[str, Any] = {}
    for _ in range(rounds):
        for scenario, url in urls.items():
            client = topo.client("mesh" if scenario.startswith("mesh") else scenario)
            cpu = cpu_seconds(pid)
            text = topo.run_text(client, ["wrk", f"-t{threads}", f"-c{conns}",
                                          f"-d{seconds}s", "--latency", url],
                                 timeout=seconds + 60)
            result = parse_wrk(text)
            if scenario == "mesh":
                served = result["rps"] * seconds
                result["waypoint_cpu_us_per_request"] = round(
                    (cpu_seconds(pid) - cpu) * 1e6 / max(served, 1), 1)
            if scenario not in out or result["rps"] > out[scenario]["rps"]:
                out[scenario] = result
    out["rounds"] = rounds
    out["waypoint_requests_counted"] = waypoint_requests(topo) - before
    return out

"""Scenario 4: HTTP/1.1 keep-alive rate and latency at 64 connections, with wrk.

  direct      plain/client -> plain/server:7002
  mesh        bench/client -> web.bench:80 (service VIP) -> node proxy -> HBONE ->
              waypoint (route) -> HBONE -> node proxy -> bench/server:7002
  mesh_l4     bench/client -> bench/server:7002 (pod IP: HBONE, no waypoint), for scale
  envoy       plain/client -> client-side Envoy (HTTP connection manager, one route)
              -> mTLS -> server-side Envoy (tcp_proxy) -> plain/server:7002
  mesh_workers2, envoy_concurrency2
              the same two paths with two cores for the L7 proxy: the waypoint with
              `--workers 2` (Gateway annotation) and a second client-side Envoy with
              `--concurrency 2`; the node proxies and the server-side Envoy keep one
              core each. Run after the one-core rows, alternating, best round each.
The mesh crosses three proxies (two node proxies and the waypoint) where the Envoy
sidecar pair crosses two: that is ambient's L7 design, not a bench artefact. On a
2-core machine both sides share the cores with wrk, the node proxies and the backend:
the fair comparison is the ratio at equal L7 cores, not the absolute rates."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from bench import envoy
from bench.topology import ENVOY_IN, ENVOY_OUT, HTTP, BenchTopology, waypoint_yaml
from mesh.config.annotations import WAYPOINT_HBONE_MAX_STREAMS, WAYPOINT_WORKERS
from mesh.runtime import PodNotFound

# Streams per inbound HBONE connection of the 2-worker waypoint: the client's node
# proxy pools its 64 tunnels on one connection otherwise, and SO_REUSEPORT spreads
# connections, not streams. 16 gives four connections for wrk's 64.
MAX_STREAMS_WORKERS = 16
ENVOY_C2_OUT = ENVOY_OUT + 300  # the --concurrency 2 client-side Envoy

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


def workers_yaml(workers: int, max_streams: int) -> str:
    """waypoint_yaml() with the Gateway annotated to run `workers` processes."""
    doc = waypoint_yaml()
    head = "metadata: {name: waypoint, namespace: bench}"
    assert head in doc
    return doc.replace(head, "metadata:\n  name: waypoint\n  namespace: bench\n"
                       f"  annotations: {{{WAYPOINT_WORKERS}: '{workers}', "
                       f"{WAYPOINT_HBONE_MAX_STREAMS}: '{max_streams}'}}", 1)


def setup_waypoint(topo: BenchTopology, workers: int = 1,
                   max_streams: int = MAX_STREAMS_WORKERS) -> None:
    yaml = waypoint_yaml() if workers == 1 else workers_yaml(workers, max_streams)
    topo.mesh.apply(yaml, file="waypoint.yaml")
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

    def has_workers() -> bool:  # the pod was recreated with the new command
        try:
            return len(waypoint_pids(topo)) == (workers + 1 if workers > 1 else 1)
        except (PodNotFound, RuntimeError, OSError):
            return False
    topo.wait(f"waypoint with {workers} worker(s)", has_workers, timeout=120)
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


def waypoint_pids(topo: BenchTopology) -> list[int]:
    """The waypoint's processes: one, or the supervisor and its workers."""
    pod = topo.pod("bench", "waypoint")
    pids = []
    for pid in (pod.cgroup_path / "cgroup.procs").read_text().split():
        try:
            if b"waypoint" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(int(pid))
        except OSError:
            continue  # exited meanwhile
    if not pids:
        raise RuntimeError(f"no waypoint process in {pod.key}")
    return pids


def waypoint_pid(topo: BenchTopology) -> int:
    return waypoint_pids(topo)[0]


def cpu_seconds(pid: int | list[int]) -> float:
    """User + system CPU time of a process (or of several, summed) so far."""
    total = 0.0
    for p in [pid] if isinstance(pid, int) else pid:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def worker_requests(topo: BenchTopology) -> dict[str, float]:
    """ambient_waypoint_worker_requests_total per worker (the supervisor's /metrics)."""
    out = {}
    for m in re.finditer(r'^ambient_waypoint_worker_requests_total\{worker="(\d+)"\} (\S+)$',
                         _waypoint_metrics(topo), re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def proxy_pids(topo: BenchTopology, scenario: str) -> dict[str, list[int]]:
    """The proxies a scenario's requests cross, by role: whose CPU time to count."""
    if scenario.startswith("mesh"):
        pids = {"node-1": [topo.agent_pid("node-1")], "node-2": [topo.agent_pid("node-2")]}
        if scenario != "mesh_l4":
            pids["waypoint"] = waypoint_pids(topo)
        return pids
    if scenario.startswith("envoy"):
        # _start_envoys: server pod, server-local pod, then the client pod's Envoy; the
        # --concurrency one is appended last.
        client = topo.envoys[-1] if scenario != "envoy" else topo.envoys[2]
        return {"envoy_client": [client.pid], "envoy_server": [topo.envoys[0].pid]}
    return {}


def start_envoy_concurrency(topo: BenchTopology, concurrency: int) -> str:
    """A second client-side HCM Envoy with `concurrency` workers, to the same server-
    side Envoy (and with the same certificate) as the one-core pair; its URL."""
    tls_dir = topo.workdir / "tls"
    tls = envoy.TlsFiles(tls_dir / "client.pem", tls_dir / "client.key", tls_dir / "ca.pem")
    server = topo.pod("plain", "server")
    proc = envoy.EnvoyProcess(
        topo.mesh.runtime, topo.pod("plain", "client"),
        envoy.client_config([envoy.Forward(ENVOY_C2_OUT + HTTP, str(server.ip),
                                           ENVOY_IN + HTTP, http=True)], tls),
        topo.workdir, topo._next_base_id(), concurrency=concurrency)
    topo.envoys.append(proc)  # stopped with the topology
    proc.wait_ready()
    return f"http://127.0.0.1:{ENVOY_C2_OUT + HTTP}/"


def _rounds(topo: BenchTopology, urls: dict[str, str], rounds: int, seconds: int,
            conns: int, threads: int, out: dict[str, Any]) -> None:
    """Every path once per round, one after another, keeping each path's best round.
    For a waypoint row also the CPU time of all its processes per request in that
    round and, with workers, how many requests each worker served."""
    for _ in range(rounds):
        for scenario, url in urls.items():
            client = topo.client("mesh" if scenario.startswith("mesh") else "envoy")
            waypoint = scenario in ("mesh", "mesh_workers2")
            pids = waypoint_pids(topo) if waypoint else []
            cpu = cpu_seconds(pids)
            roles = proxy_pids(topo, scenario)
            role_cpu = {role: cpu_seconds(p) for role, p in roles.items()}
            split = worker_requests(topo) if waypoint else {}
            text = topo.run_text(client, ["wrk", f"-t{threads}", f"-c{conns}",
                                          f"-d{seconds}s", "--latency", url],
                                 timeout=seconds + 60)
            result = parse_wrk(text)
            if roles:  # every proxy on the path: where the machine's CPU goes
                served = max(result["rps"] * seconds, 1)
                per = {role: round((cpu_seconds(p) - role_cpu[role]) * 1e6 / served, 1)
                       for role, p in roles.items()}
                result["proxy_cpu_us_per_request"] = {**per, "total": round(
                    sum(per.values()), 1)}
            if waypoint:
                served = result["rps"] * seconds
                result["waypoint_cpu_us_per_request"] = round(
                    (cpu_seconds(pids) - cpu) * 1e6 / max(served, 1), 1)
                if split:
                    after = worker_requests(topo)
                    result["requests_per_worker"] = {w: after[w] - split.get(w, 0)
                                                     for w in sorted(after)}
            if scenario not in out or result["rps"] > out[scenario]["rps"]:
                out[scenario] = result


def run(topo: BenchTopology, seconds: int = 10, conns: int = 64, threads: int = 2,
        rounds: int = 2, workers: int = 2, max_streams: int = MAX_STREAMS_WORKERS
        ) -> dict[str, Any]:
    """One core per L7 proxy first (direct, mesh, mesh_l4, envoy), then `workers` cores
    (the waypoint with --workers, a client-side Envoy with --concurrency): the machine
    is shared, so each path's best of `rounds` alternating rounds is kept (as the L4
    scenarios do), with the waypoint's CPU time per request in that round, a figure
    other load disturbs far less than the rate."""
    setup_waypoint(topo)
    urls = {
        "direct": f"http://{topo.target('direct', HTTP)}/",
        "mesh": "http://web.bench/",
        "mesh_l4": f"http://{topo.target('mesh', HTTP)}/",
        "envoy": f"http://{topo.target('envoy', HTTP)}/",
    }
    before = waypoint_requests(topo)
    out: dict[str, Any] = {}
    _rounds(topo, urls, rounds, seconds, conns, threads, out)
    out["rounds"] = rounds
    out["waypoint_requests_counted"] = waypoint_requests(topo) - before
    out["mesh_vs_envoy"] = round(out["mesh"]["rps"] / out["envoy"]["rps"], 3)
    if workers > 1:
        envoy_url = start_envoy_concurrency(topo, workers)
        setup_waypoint(topo, workers, max_streams)
        multi = {"mesh_workers2": "http://web.bench/", "envoy_concurrency2": envoy_url}
        _rounds(topo, multi, rounds, seconds, conns, threads, out)
        out["workers"] = {"waypoint_workers": workers, "envoy_concurrency": workers,
                          "hbone_max_streams": max_streams}
        out["mesh_vs_envoy_2cores"] = round(
            out["mesh_workers2"]["rps"] / out["envoy_concurrency2"]["rps"], 3)
    return out

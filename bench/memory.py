"""Scenario 5 (memory) and cold tunnels: the node proxy's RSS with 1, 10 and 100
enrolled pods on its node, against one Envoy sidecar per pod.

The node proxy is the whole node-agent process (one process: proxy, eBPF loader, pod
supervisor, config client). Envoys run with the sidecar shape (one inbound mTLS
listener to the app, one outbound listener to a peer over mTLS), --concurrency 1,
side by side on loopback; their RSS is summed. The 100 enrolled pods also give cold
tunnels: the first connection from node-1 to each is a fresh mTLS HBONE connection."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import envoy
from bench.topology import ECHO, BenchTopology, fleet_yaml
from mesh.identity.ca import CertificateAuthority
from mesh.identity.spiffe import SpiffeId


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ProcessLookupError(pid)


def pss_mb(pid: int) -> float:
    """Proportional set size: shared library pages split among the processes mapping
    them (two node agents and the controller share libpython, grpc, OpenSSL ...)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise ProcessLookupError(pid)


def _enrolled_on(topo: BenchTopology, node: str) -> int:
    return len(topo.mesh.agent_status(node)["enrolled_pods"])


def proxy_pids(topo: BenchTopology, node: str) -> list[int]:
    """The node proxy's processes: the agent, plus its worker processes if it runs any
    (the bench runs none; with workers the fair figure is the sum)."""
    workers: list[int] = topo.mesh.agent_status(node).get("workers", [])
    return [topo.agent_pid(node), *workers]


def node_proxy(topo: BenchTopology, counts: tuple[int, ...] = (1, 10, 100)) -> dict[str, Any]:
    """RSS of node-2's node proxy (its agent, plus workers if any) as enrolled pods are
    added (bench/server is the first);
    then cold vs pooled new connections from bench/client to the 100 fleet pods."""
    pid = topo.agent_pid("node-2")
    rss: dict[str, float] = {}
    breakdown: dict[str, dict[str, float]] = {}
    pss: dict[str, float] = {}
    processes: dict[str, int] = {}
    for n in counts:
        if n > 1:
            topo.mesh.apply(fleet_yaml(1, n), file="fleet.yaml")
        topo.wait(f"{n} pods enrolled on node-2",
                  lambda n=n: _enrolled_on(topo, "node-2") >= n, timeout=180)
        time.sleep(2.0)  # let certificate fetches and listener setup settle
        pids = proxy_pids(topo, "node-2")
        rss[str(n)] = round(sum(rss_mb(p) for p in pids), 1)
        pss[str(n)] = round(sum(pss_mb(p) for p in pids), 1)
        processes[str(n)] = len(pids)
        breakdown[str(n)] = rss_breakdown_mb(pid)
    fleet = [topo.pod("fleet", f"p{i}") for i in range(1, max(counts))]
    targets = ",".join(f"{p.ip}:{ECHO}" for p in fleet)
    topo.wait("fleet echo servers up", lambda: _all_answer(topo, targets), timeout=120)
    pids = proxy_pids(topo, "node-2")
    rss["after_traffic"] = round(sum(rss_mb(p) for p in pids), 1)
    pss["after_traffic"] = round(sum(pss_mb(p) for p in pids), 1)
    return {"rss_mb": rss, "rss_breakdown_mb": breakdown, "pss_mb": pss,
            "processes": processes, "agent_pid": pid}


def _all_answer(topo: BenchTopology, targets: str) -> bool:
    try:
        topo.run_client("direct", ["connect", targets, "--rounds", "1"], timeout=60)
        return True
    except RuntimeError:
        return False


def cold_tunnels(topo: BenchTopology, fleet_size: int) -> dict[str, Any]:
    """Mesh: first connection to each fleet pod (cold: TLS handshake + CONNECT) and
    the two later rounds (pooled). Run after `node_proxy` created the fleet. The fleet
    pods were touched only by the plain client so far (plaintext, not through a tunnel
    from bench/client), so the mesh client's pool holds no connection to them."""
    targets = ",".join(f"{topo.pod('fleet', f'p{i}').ip}:{ECHO}" for i in range(1, fleet_size))
    r = topo.run_client("mesh", ["connect", targets, "--rounds", "3"], timeout=300)
    return {"cold": r["first"], "pooled": r["later"]}


def envoy_sidecars(workdir: Path, counts: tuple[int, ...] = (1, 10, 100)) -> dict[str, float]:
    """Summed RSS of N idle sidecar Envoys (loopback, host netns)."""
    ca = CertificateAuthority.load_or_create(workdir / "sidecar-ca")
    tls = envoy.mint_tls(ca, SpiffeId.for_workload("sidecars", "pod"), workdir / "sidecar-tls")
    out: dict[str, float] = {}
    for n in counts:
        procs: list[envoy.EnvoyProcess] = []
        try:
            for i in range(n):
                base = 30000 + 3 * i
                cfg = envoy.server_config({base: base + 1}, tls)
                out_cfg = envoy.client_config([envoy.Forward(base + 2, "127.0.0.1", base)], tls)
                cfg["static_resources"]["listeners"] += out_cfg["static_resources"]["listeners"]
                cfg["static_resources"]["clusters"] += out_cfg["static_resources"]["clusters"]
                procs.append(envoy.EnvoyProcess(None, None, cfg, workdir, 5000 + i))
            for p in procs:
                p.wait_ready(timeout=120)
            time.sleep(1.0)
            out[str(n)] = round(sum(rss_mb(p.pid) for p in procs), 1)
        finally:
            for p in procs:
                p.stop()
    return out


def rss_breakdown_mb(pid: int) -> dict[str, float]:
    """RSS by origin (from /proc/PID/smaps): what the process allocated (anonymous:
    heap, buffers, Python objects) versus pages of mapped files (shared libraries: bcc's
    LLVM/clang alone are ~100 MB, loaded once by the agent to compile its eBPF programs)."""
    groups: dict[str, float] = {"anonymous": 0.0, "bcc_llvm_clang": 0.0, "other_files": 0.0}
    current = "anonymous"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(maxsplit=1)[0]
        if "-" in first and not first.endswith(":"):  # a mapping header line
            parts = line.split()
            path = parts[5] if len(parts) > 5 else ""
            if not path or path.startswith("["):
                current = "anonymous"
            elif any(k in path for k in ("libbcc", "LLVM", "libclang", "libbpf")):
                current = "bcc_llvm_clang"
            else:
                current = "other_files"
        elif first == "Rss:":
            groups[current] += int(line.split()[1]) / 1024
    return {k: round(v, 1) for k, v in groups.items()}

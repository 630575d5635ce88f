"""Scenario 5 (memory) and cold tunnels: the node proxy's RSS with 1, 10 and 100
enrolled pods on its node, against one Envoy sidecar per pod.

The node proxy is the whole node-agent process (one process: proxy, eBPF loader, pod
supervisor, config client). Envoys run with the sidecar shape (one inbound mTLS
listener to the app, one outbound listener to a peer over mTLS), --concurrency 1,
side by side on loopback; their RSS is summed. The 100 enrolled pods also give cold
tunnels: the first connection from node-1 to each is a fresh mTLS HBONE connection."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench import envoy
from bench.topology import ECHO, ECHO_ONLY, BenchTopology, _ns, _pod, fleet_yaml
from mesh.identity.ca import CertificateAuthority
from mesh.identity.spiffe import SpiffeId
from nodeagent.proxy.warm import ENV as WARM_ENV


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
    from bench/client), so the mesh client's pool holds no connection to them.
    Then `service_other_endpoints`: the same first connections, to endpoints of a
    service the client already used (warmed ahead unless AMBIENT_WARM_TUNNELS=0)."""
    targets = ",".join(f"{topo.pod('fleet', f'p{i}').ip}:{ECHO}" for i in range(1, fleet_size))
    r = topo.run_client("mesh", ["connect", targets, "--rounds", "3"], timeout=300)
    return {"cold": r["first"], "pooled": r["later"],
            "service_other_endpoints": service_other_endpoints(topo)}


WARM_SERVICES = 3
WARM_ENDPOINTS = 9  # the endpoint used first + nodeagent.proxy.warm.PER_SERVICE others


def warm_services_yaml(services: int = WARM_SERVICES, endpoints: int = WARM_ENDPOINTS) -> str:
    """Services s1..sN in namespace `warm`, each over `endpoints` echo pods on node-2
    (each pod its own ServiceAccount, as the fleet)."""
    docs = [_ns("warm", True)]
    for s in range(1, services + 1):
        docs += [_pod("warm", f"s{s}-e{e}", "node-2", ECHO_ONLY, f"app: s{s}")
                 for e in range(1, endpoints + 1)]
        docs.append(f"apiVersion: v1\nkind: Service\nmetadata:\n  name: s{s}\n"
                    f"  namespace: warm\nspec:\n  selector: {{app: s{s}}}\n"
                    f"  ports: [{{name: echo, port: {ECHO}, targetPort: {ECHO}}}]\n")
    return "---\n".join(docs)


def _service_ip(topo: BenchTopology, service: str) -> str | None:
    """The service's VIP as the client pod's /etc/hosts names it (the node agent
    writes service names there)."""
    hosts = Path("/etc/netns") / topo.client("mesh").netns / "hosts"
    for line in hosts.read_text().splitlines():
        ip, *names = line.split()
        if service in names:
            return ip
    return None


def service_other_endpoints(topo: BenchTopology, services: int = WARM_SERVICES,
                            endpoints: int = WARM_ENDPOINTS, pause: float = 0.5
                            ) -> dict[str, Any]:
    """Mesh: the first connection from bench/client to each endpoint of a service after
    the client's first connection to that service. Round robin sends the next
    `endpoints - 1` connections to the VIP to the other endpoints, none of which the
    client has a tunnel to: cold without warming, pooled if the first connection
    warmed them. The measured run starts `pause` seconds after the first connections
    (warming waits for 20 ms without a real tunnel setup, then opens one at a time).
    `first_use` is the services' first connections themselves, back to back (cold
    either way; with warming they must not be slower)."""
    topo.mesh.apply(warm_services_yaml(services, endpoints), file="warm.yaml")
    pods = [f"s{s}-e{e}" for s in range(1, services + 1) for e in range(1, endpoints + 1)]
    topo.wait("warm pods enrolled", lambda: sum(
        p.startswith("warm/") for p in topo.mesh.agent_status("node-2")["enrolled_pods"])
        >= len(pods), timeout=180)
    direct = ",".join(f"{topo.pod('warm', p).ip}:{ECHO}" for p in pods)
    topo.wait("warm echo servers up", lambda: _all_answer(topo, direct), timeout=120)
    vips = [topo.wait(f"s{s}.warm in the client's hosts",
                      lambda s=s: _service_ip(topo, f"s{s}.warm"), timeout=60)
            for s in range(1, services + 1)]
    first = topo.run_client("mesh", ["connect", ",".join(f"{v}:{ECHO}" for v in vips),
                                     "--rounds", "1"])
    others = ",".join(f"{v}:{ECHO}" for v in vips for _ in range(endpoints - 1))
    time.sleep(pause)
    r = topo.run_client("mesh", ["connect", others, "--rounds", "1"], timeout=300)
    return {"first_use": first["first"], "other_endpoints": r["first"], "pause_s": pause,
            "warm_tunnels": os.environ.get(WARM_ENV, "1")}


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

"""Control-plane benchmark: snapshot build + push for a large mesh.

A real controller process (`python -m controller.main`, loopback ports) and N real
gRPC subscribers (ConfigSubscriber, one per node, in this process). Config: S services,
each selecting a Deployment of R replicas (S*R pods = endpoints once the nodes report
their pod IPs through ReportPods). Measured:
  1. initial apply of the whole config -> every node ACKed a snapshot with all pods placed,
  2. every node reports its pods -> every node sees all S*R endpoints,
  3. K single-object applies -> time from the apply request to all N ACKs (subscriber
     side) and to the controller's status showing all N in sync.
Usage: python -m bench.controlplane [--services 1000] [--replicas 10] [--nodes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from mesh.api import config_pb2 as pb
from mesh.identity.node_token import derive_node_token
from mesh.xds import Backoff, ConfigSubscriber, PodReporter


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mesh_yaml(services: int, replicas: int) -> str:
    docs = ["apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bench\n  labels:\n"
            "    ambientmesh.io/dataplane-mode: ambient\n"]
    for i in range(services):
        docs.append(
            f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app{i}, namespace: bench}}\n"
            f"spec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: app{i}}}}}\n"
            f"  template:\n    metadata: {{labels: {{app: app{i}}}}}\n"
            f"    spec: {{serviceAccountName: app{i}, containers: [{{name: main, "
            f"command: [python3, -m, http.server, '8080'], ports: [{{name: http, "
            f"containerPort: 8080}}]}}]}}\n")
        docs.append(
            f"apiVersion: v1\nkind: Service\nmetadata: {{name: svc{i}, namespace: bench}}\n"
            f"spec: {{selector: {{app: app{i}}}, ports: [{{name: http, port: 80, "
            f"targetPort: http}}]}}\n")
    return "---\n".join(docs)


async def _seen_after(sub: ConfigSubscriber, service: str, t0: float) -> float:
    """Seconds from t0 until `sub` applied a snapshot containing `service`."""
    await sub.wait_for(lambda s: any(x.name == service for x in s.services), 60)
    return time.monotonic() - t0


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.grpc_port, self.admin_port = _free_port(), _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.subs: list[ConfigSubscriber] = []

    def start_controller(self) -> None:
        self.log = open(self.tmp / "controller.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.main", "--config-dir", str(self.tmp / "cfg"),
             "--state-dir", str(self.tmp / "state"),
             "--grpc-addr", f"127.0.0.1:{self.grpc_port}",
             "--admin-addr", f"127.0.0.1:{self.admin_port}", "--log-level", "warning"],
            stdout=self.log, stderr=self.log, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url("/v1/status"), timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("controller did not start: see " + str(self.tmp / "controller.log"))

    def stop_controller(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    async def wait_all(self, predicate: Callable[[pb.Snapshot], bool], timeout: float) -> float:
        t0 = time.monotonic()
        await asyncio.gather(*(s.wait_for(predicate, timeout) for s in self.subs))
        return time.monotonic() - t0

    async def controller_in_sync(self, http: httpx.AsyncClient, timeout: float) -> None:
        """Until status shows every proxy connected, ACKed its latest version, and that
        version is the one the subscriber holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = (await http.get(self.url("/v1/status"))).json()
            proxies = {p["name"]: p for p in st["proxies"]}
            if all(n in proxies and proxies[n]["inSync"]
                   and proxies[n]["ackedVersion"] == s.version
                   for n, s in ((s.name, s) for s in self.subs)):
                return
            await asyncio.sleep(0.01)
        raise TimeoutError("controller status did not show every proxy in sync")

    async def run(self) -> dict[str, Any]:
        a = self.args
        total = a.services * a.replicas
        secret = (self.tmp / "state" / "node-token.secret").read_bytes()
        token = (self.tmp / "state" / "admin.token").read_text().strip()
        nodes = [f"node-{i:02d}" for i in range(a.nodes)]
        self.subs = [ConfigSubscriber(
            f"127.0.0.1:{self.grpc_port}", kind=pb.NODE, name=n, node=n,
            token=derive_node_token(secret, n), apply=lambda s: None,
            pod_cidrs=[f"10.{100 + i // 200}.{i % 200}.0/24"],
            backoff=Backoff(initial=0.05, maximum=1.0)) for i, n in enumerate(nodes)]
        results: dict[str, Any] = {}
        tasks = [asyncio.create_task(s.run()) for s in self.subs]
        try:
            await self.wait_all(lambda s: True, 30)
            text = mesh_yaml(a.services, a.replicas)
            async with httpx.AsyncClient(timeout=120,
                                         headers={"Authorization": f"Bearer {token}"}) as http:
                t0 = time.monotonic()
                r = await http.post(self.url("/v1/apply"), json={"yaml": text, "file": "mesh.yaml"})
                r.raise_for_status()
                t_apply = time.monotonic() - t0
                await self.wait_all(lambda s: len(s.workloads) == total, 120)
                results["initial_apply_s"] = t_apply
                results["initial_all_acked_s"] = time.monotonic() - t0

                # Node agents report their pods: endpoints appear.
                t0 = time.monotonic()
                for i, sub in enumerate(self.subs):
                    snap = sub.snapshot
                    assert snap is not None
                    statuses = [pb.PodStatus(
                        namespace=p.namespace, name=p.name, uid=p.uid,
                        pod_ip=f"10.{100 + i // 200}.{i % 200}.{(j % 250) + 2}",
                        phase=pb.RUNNING) for j, p in enumerate(snap.pods_to_run)]
                    async with PodReporter(f"127.0.0.1:{self.grpc_port}", node=sub.name,
                                           token=derive_node_token(secret, sub.name)) as rep:
                        await rep.report(statuses)
                t_report = time.monotonic() - t0
                await self.wait_all(
                    lambda s: sum(len(x.endpoints) for x in s.services) == total, 120)
                results["report_pods_s"] = t_report
                results["endpoints_all_acked_s"] = time.monotonic() - t0
                snap = self.subs[0].snapshot
                assert snap is not None
                results["snapshot_bytes"] = snap.ByteSize()

                # Incremental changes: apply -> all ACKed.
                sub_lat, ctl_lat, first_lat = [], [], []
                for k in range(a.rounds):
                    name = f"extra{k}"
                    doc = (f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, "
                           f"namespace: bench}}\nspec: {{selector: {{app: app{k}}}, "
                           f"ports: [{{port: 81, targetPort: 8080}}]}}\n")
                    t0 = time.monotonic()
                    r = await http.post(self.url("/v1/apply"),
                                        json={"yaml": doc, "file": f"{name}.yaml"})
                    r.raise_for_status()
                    done = await asyncio.gather(*(_seen_after(sub, name, t0) for sub in self.subs))
                    first_lat.append(min(done))
                    sub_lat.append(max(done))
                    await self.controller_in_sync(http, 60)
                    ctl_lat.append(time.monotonic() - t0)
                results["incremental_subscriber_s"] = sub_lat
                results["incremental_first_s"] = first_lat
                results["incremental_controller_s"] = ctl_lat
                metrics = (await http.get(self.url("/metrics"))).text
                results["metrics"] = {
                    line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
                    if line.startswith(("ambient_controller_snapshot_build_seconds_sum",
                                        "ambient_controller_snapshot_build_seconds_count",
                                        "pilot_xds_pushes_total",
                                        "pilot_proxy_convergence_time_sum",
                                        "pilot_proxy_convergence_time_count"))}
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return results


def report(args: argparse.Namespace, r: dict[str, Any]) -> str:
    inc_s, inc_c = r["incremental_subscriber_s"], r["incremental_controller_s"]
    inc_f = r["incremental_first_s"]
    m = r["metrics"]
    builds = m.get("ambient_controller_snapshot_build_seconds_count", 0) or 1
    lines = [
        f"mesh: {args.services} services, {args.services * args.replicas} endpoints, "
        f"{args.nodes} node subscribers",
        f"snapshot size per node: {r['snapshot_bytes'] / 1e6:.2f} MB",
        f"initial apply (validate + persist + respond): {r['initial_apply_s']:.2f} s; "
        f"apply -> all {args.nodes} ACKed: {r['initial_all_acked_s']:.2f} s",
        f"ReportPods from all nodes: {r['report_pods_s']:.2f} s; "
        f"-> all nodes see every endpoint: {r['endpoints_all_acked_s']:.2f} s",
        f"one-object apply -> first subscriber applied it: "
        f"median {statistics.median(inc_f) * 1000:.0f} ms, max {max(inc_f) * 1000:.0f} ms",
        f"one-object apply -> all {args.nodes} applied+ACKed (subscriber side): "
        f"median {statistics.median(inc_s) * 1000:.0f} ms, max {max(inc_s) * 1000:.0f} ms "
        f"({len(inc_s)} rounds)",
        f"one-object apply -> controller status shows all in sync: "
        f"median {statistics.median(inc_c) * 1000:.0f} ms, max {max(inc_c) * 1000:.0f} ms",
        f"snapshot rebuild for all proxies (mean of {int(builds)}): "
        f"{m.get('ambient_controller_snapshot_build_seconds_sum', 0) / builds * 1000:.0f} ms",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--replicas", type=int, default=10)
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    with tempfile.TemporaryDirectory(prefix="ambient-bench-cp-") as d:
        bench = Bench(args, Path(d))
        bench.start_controller()
        try:
            try:
                import uvloop

                results = uvloop.run(bench.run())
            except ImportError:
                results = asyncio.run(bench.run())
        finally:
            bench.stop_controller()
    print(report(args, results))


if __name__ == "__main__":
    main()

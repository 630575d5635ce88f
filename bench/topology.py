"""The bench topology: one local mesh (real controller, two node agents, real pods) in
which the same client program reaches the same server program three ways.

  direct  plain/client (node-1)  -> plain/server (node-2)            no proxy
  mesh    bench/client (node-1)  -> bench/server (node-2)            captured, HBONE
  envoy   plain/client -> 127.0.0.1 Envoy (client pod) -> mTLS -> Envoy (server pod)
          -> plain/server's app on loopback                          the sidecar pair
Same-node variants use `server-local` pods on node-1. Every server pod runs the same
apps (bench/apps.py): echo :7000, sink :7001, http :7002. The L7 service `web.bench`
(port 80 -> 7002) goes through the waypoint `bench/waypoint`.

Built on tests/e2e/mesh_harness.LocalMesh, with quiet logs (debug logging on every
connection would bill the mesh for log formatting nobody asked for) and no worker
processes (the Envoys run one worker thread each)."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import envoy
from mesh.identity.ca import CertificateAuthority
from mesh.identity.spiffe import SpiffeId
from mesh.runtime import Pod
from tests.e2e.mesh_harness import LocalMesh, wait_for

APPS = str(Path(__file__).resolve().parent / "apps.py")
PY = sys.executable
ECHO, SINK, HTTP = 7000, 7001, 7002
ENVOY_IN = 10000  # server-side Envoy listens on ENVOY_IN + app port
ENVOY_OUT = 20000  # client-side Envoy listens on 127.0.0.1:ENVOY_OUT + app port (+100 local)
LOG_LEVEL = "warning"


def _ns(name: str, ambient: bool) -> str:
    labels = "\n  labels:\n    ambientmesh.io/dataplane-mode: ambient" if ambient else ""
    return f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}{labels}\n"


def _pod(ns: str, name: str, node: str, containers: dict[str, list[str]],
         labels: str = "") -> str:
    cs = "".join(f"\n  - name: {c}\n    command: {json.dumps(argv)}"
                 for c, argv in containers.items())
    return (f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n"
            f"  labels: {{{labels}}}\nspec:\n  nodeName: {node}\n"
            f"  serviceAccountName: {name}\n  containers:{cs}\n")


SLEEPER = {"main": ["sleep", "infinity"]}
SERVERS = {"echo": [PY, APPS, "echo", str(ECHO)], "sink": [PY, APPS, "sink", str(SINK)],
           "http": [PY, APPS, "http", str(HTTP)]}
ECHO_ONLY = {"echo": [PY, APPS, "echo", str(ECHO)]}


def topology_yaml() -> str:
    return "---\n".join([
        _ns("bench", True), _ns("plain", False),
        _pod("bench", "client", "node-1", SLEEPER),
        _pod("bench", "server", "node-2", SERVERS, "app: web"),
        _pod("bench", "server-local", "node-1", SERVERS),
        _pod("plain", "client", "node-1", SLEEPER),
        _pod("plain", "server", "node-2", SERVERS),
        _pod("plain", "server-local", "node-1", SERVERS),
    ])


def waypoint_yaml() -> str:
    return """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: bench}
spec:
  gatewayClassName: ambient-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: bench
  labels: {ambientmesh.io/use-waypoint: waypoint}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 7002}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: bench}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: web, port: 80}]
"""


def fleet_yaml(start: int, stop: int) -> str:
    """Enrolled echo pods on node-2: the memory scenario and cold tunnels."""
    docs = [_ns("fleet", True)]
    docs += [_pod("fleet", f"p{i}", "node-2", ECHO_ONLY) for i in range(start, stop)]
    return "---\n".join(docs)


class BenchTopology:
    """Owns the mesh, the Envoys and the temp dir; `close()` removes every trace."""

    def __init__(self) -> None:
        # Quiet logs, and one proxy process per node (no workers): Envoy runs with
        # --concurrency 1, so this compares one core against one core.
        self.mesh = LocalMesh("amb" + secrets.token_hex(2),
                              agent_args=("--log-level", LOG_LEVEL, "--workers", "0"),
                              controller_args=("--log-level", LOG_LEVEL))
        self.workdir = Path(tempfile.mkdtemp(prefix="ambient-bench-"))
        self.envoys: list[envoy.EnvoyProcess] = []
        self._base_id = 100 + secrets.randbelow(1000) * 10

    # ---- lifecycle ---------------------------------------------------------------
    def start(self) -> BenchTopology:
        self.mesh.start()
        self.mesh.apply(topology_yaml(), file="bench.yaml")
        for ns in ("bench", "plain"):
            for name in ("client", "server", "server-local"):
                self.mesh.pod(ns, name, enrolled=(ns == "bench"))
        self._start_envoys()
        for scenario in ("direct", "mesh", "envoy"):
            wait_for(f"{scenario} echo", lambda s=scenario: self._answers(s), timeout=30)
        return self

    def close(self) -> None:
        for e in self.envoys:
            e.stop()
        self.mesh.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- Envoy pair --------------------------------------------------------------
    def _next_base_id(self) -> int:
        self._base_id += 1
        return self._base_id

    def _start_envoys(self) -> None:
        ca = CertificateAuthority.load_or_create(self.workdir / "ca")
        client_tls = envoy.mint_tls(ca, SpiffeId.for_workload("plain", "client"),
                                    self.workdir / "tls")
        server_tls = envoy.mint_tls(ca, SpiffeId.for_workload("plain", "server"),
                                    self.workdir / "tls")
        rt = self.mesh.runtime
        server = self.pod("plain", "server")
        local = self.pod("plain", "server-local")
        inbound = {ENVOY_IN + p: p for p in (ECHO, SINK, HTTP)}
        for pod in (server, local):
            self.envoys.append(envoy.EnvoyProcess(rt, pod, envoy.server_config(inbound,
                                                                               server_tls),
                                                  self.workdir, self._next_base_id()))
        forwards = [envoy.Forward(ENVOY_OUT + p, str(server.ip), ENVOY_IN + p, http=p == HTTP)
                    for p in (ECHO, SINK, HTTP)]
        forwards += [envoy.Forward(ENVOY_OUT + 100 + p, str(local.ip), ENVOY_IN + p)
                     for p in (ECHO, SINK)]
        self.envoys.append(envoy.EnvoyProcess(rt, self.pod("plain", "client"),
                                              envoy.client_config(forwards, client_tls),
                                              self.workdir, self._next_base_id()))
        for e in self.envoys:
            e.wait_ready()

    # ---- addressing ----------------------------------------------------------------
    def pod(self, ns: str, name: str) -> Pod:
        return self.mesh.runtime.get_pod(ns, name)

    def client(self, scenario: str) -> Pod:
        return self.pod("bench" if scenario == "mesh" else "plain", "client")

    def target(self, scenario: str, port: int, local: bool = False) -> str:
        """Where `scenario`'s client connects to reach app `port` (cross- or same-node)."""
        name = "server-local" if local else "server"
        if scenario == "envoy":
            return f"127.0.0.1:{ENVOY_OUT + (100 if local else 0) + port}"
        ns = "bench" if scenario == "mesh" else "plain"
        return f"{self.pod(ns, name).ip}:{port}"

    # ---- running clients -------------------------------------------------------------
    def run_client(self, scenario: str, args: list[str], timeout: float = 120.0
                   ) -> dict[str, Any]:
        return self.run_in(self.client(scenario), [PY, APPS, *args], timeout)

    def run_in(self, pod: Pod, argv: list[str], timeout: float = 120.0) -> dict[str, Any]:
        out = self.mesh.runtime.run(pod, argv, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[1:4])} in {pod.key} failed "
                               f"({out.returncode}): {out.stderr[-1500:]}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result

    def run_text(self, pod: Pod, argv: list[str], timeout: float = 120.0) -> str:
        out = self.mesh.runtime.run(pod, argv, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{argv[0]} in {pod.key} failed: {out.stderr[-1500:]}")
        return out.stdout

    def _answers(self, scenario: str) -> bool:
        try:
            self.run_client(scenario, ["connect", self.target(scenario, ECHO), "--rounds", "1"],
                            timeout=15)
            return True
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    # ---- processes -----------------------------------------------------------------
    def agent_pid(self, node: str) -> int:
        return self.mesh.procs[node].pid

    def wait(self, what: str, check: Any, timeout: float = 60.0) -> Any:
        return wait_for(what, check, timeout=timeout, interval=0.2)

    @staticmethod
    def settle(seconds: float = 0.5) -> None:
        time.sleep(seconds)

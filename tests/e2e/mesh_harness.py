"""A whole local mesh for end-to-end tests: a real controller process, real node agent
processes, real pods. Each test cluster has its own prefix and ports, and is torn
down whole (processes, netns, cgroups, pins, state) even when the test fails."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mesh.identity.node_token import derive_node_token
from mesh.runtime import LocalRuntime, Pod
from mesh.runtime.netns import in_netns

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0,
             interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # keep polling; report the last failure
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the Prometheus samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


class LocalMesh:
    def __init__(self, cluster: str, nodes: int = 2, agent_args: tuple[str, ...] = (),
                 controller_args: tuple[str, ...] = ()) -> None:
        self.agent_args = agent_args
        self.controller_args = controller_args
        self.cluster = cluster
        self.node_names = [f"node-{i}" for i in range(1, nodes + 1)]
        self.root = Path("/run/ambientmesh") / cluster
        self.config_dir = self.root / "config"
        self.controller_state = self.root / "controller"
        self.grpc_port = free_port()
        self.admin_port = free_port()
        self.runtime = LocalRuntime(cluster=cluster)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # ---- processes ---------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        log.close()

    def start_controller(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self._spawn("controller", [
            str(BIN / "ambient-controller"), "--config-dir", str(self.config_dir),
            "--state-dir", str(self.controller_state),
            "--grpc-addr", f"127.0.0.1:{self.grpc_port}",
            "--admin-addr", f"127.0.0.1:{self.admin_port}", "--log-level", "debug",
            *self.controller_args])
        wait_for("controller admin API", lambda: self.admin("GET", "/v1/status"))

    def start_agent(self, node: str, *extra: str) -> None:
        secret = (self.controller_state / "node-token.secret").read_bytes()
        token_file = self.root / f"{node}.token"
        token_file.write_text(derive_node_token(secret, node))
        token_file.chmod(0o600)
        self._spawn(node, [
            str(BIN / "ambient-nodeagent"), "--node", node, "--cluster", self.cluster,
            "--controller", f"127.0.0.1:{self.grpc_port}", "--token-file", str(token_file),
            "--log-level", "debug", *extra])

    def start(self) -> LocalMesh:
        self.start_controller()
        for node in self.node_names:
            self.start_agent(node, *self.agent_args)
        for node in self.node_names:
            wait_for(f"agent {node} ready", lambda: self.agent_status(node)["connected"])  # noqa: B023
        return self

    def stop_process(self, name: str, sig: int = 15, timeout: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        for name in list(self.procs):
            self.stop_process(name)
        self.runtime.destroy()
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ---- APIs ----------------------------------------------------------------------
    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        token = self.controller_state / "admin.token"
        if token.exists():
            headers["Authorization"] = f"Bearer {token.read_text().strip()}"
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}{path}", method=method, headers=headers,
            data=json.dumps(body).encode() if body is not None else None)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read() or b"null")

    def apply(self, yaml_text: str, file: str = "test.yaml") -> Any:
        return self.admin("POST", "/v1/apply", {"yaml": yaml_text, "file": file})

    def delete(self, yaml_text: str, file: str = "test.yaml") -> Any:
        return self.admin("POST", "/v1/delete", {"yaml": yaml_text, "file": file})

    def node_http(self, node: str, path: str) -> bytes:
        """GET from the node agent's 15020 server, inside the node's netns."""
        n = self.runtime.get_node(node)
        with in_netns(n.netns):
            sock = socket.create_connection((str(n.host_ip), 15020), timeout=3)
        with sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n")[0]:
            raise AssertionError(f"GET {path} on {node}: {head[:100]!r}")
        return body

    def access_records(self, node: str) -> list[dict[str, Any]]:
        """The node proxy's access-log records so far (one JSON object per line)."""
        return [json.loads(line) for line in self.logs(node).splitlines()
                if line.startswith('{"log":"access"')]

    def agent_status(self, node: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.node_http(node, "/status"))
        return result

    def metrics(self, node: str) -> str:
        return self.node_http(node, "/metrics").decode()

    def pod(self, namespace: str, name: str, enrolled: bool | None = None) -> Pod:
        """Wait until the pod runs (and, if asked, is captured or not) and return it."""
        def ready() -> Pod | None:
            pod = self.runtime.get_pod(namespace, name)
            if enrolled is not None:
                captured = f"{namespace}/{name}" in self.agent_status(pod.node)["enrolled_pods"]
                if captured != enrolled:
                    return None
            return pod
        result: Pod = wait_for(f"pod {namespace}/{name}", ready)
        return result

    def wait_pods(self, enrolled: tuple[str, ...] = (), outside: tuple[str, ...] = ()
                  ) -> dict[str, Pod]:
        """Wait until each `namespace/name` of `enrolled` runs captured and each of
        `outside` runs uncaptured; the pods by `namespace/name`."""
        pods: dict[str, Pod] = {}
        for key, captured in [(k, True) for k in enrolled] + [(k, False) for k in outside]:
            namespace, name = key.split("/", 1)
            pods[key] = self.pod(namespace, name, enrolled=captured)
        return pods

    def exec(self, pod: Pod, argv: list[str], timeout: float = 30.0
             ) -> subprocess.CompletedProcess[str]:
        return self.runtime.run(pod, argv, timeout=timeout)


@contextlib.contextmanager
def local_mesh(cluster: str, nodes: int = 2, agent_args: tuple[str, ...] = ()) -> Any:
    mesh = LocalMesh(cluster, nodes, agent_args)
    try:
        yield mesh.start()
    except BaseException:
        for name in ("controller", *mesh.node_names):
            print(f"===== {name} log (tail) =====\n{mesh.logs(name)[-6000:]}")
        raise
    finally:
        mesh.close()

"""The embedded local mesh: start (controller, one node agent per local node, the
workloads) and stop (processes, then every namespace, cgroup, pin and file).

Each step reports through a `Progress` callback so the CLI can draw it; the steps
themselves never print. Ready means: every agent connected with its config ACKed,
every pod Running with an IP, every waypoint ready."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ambientctl.admin import AdminClient
from ambientctl.context import MeshContext
from ambientctl.errors import AmbientctlError, BadArgument, StartupFailed
from ambientctl.layout import MeshSettings
from ambientctl.manifests import Manifest, load
from ambientctl.processes import ProcessTable, is_alive
from ambientctl.scrape import agent_reports
from ambientctl.traces import Traces, find
from mesh.identity.node_token import derive_node_token, load_or_create_secret
from mesh.ports import CONTROLLER_ADMIN_PORT, CONTROLLER_GRPC_PORT
from mesh.runtime import LocalRuntime


class Progress(Protocol):
    def step(self, text: str) -> None: ...        # a new step starts
    def update(self, text: str) -> None: ...      # the current step's detail changed
    def done(self, text: str) -> None: ...        # the current step succeeded
    def note(self, text: str) -> None: ...        # something worth telling


@dataclass
class UpOptions:
    nodes: int = 2
    manifests_dir: Path | None = None
    grpc_port: int = CONTROLLER_GRPC_PORT
    admin_port: int = CONTROLLER_ADMIN_PORT
    trust_domain: str = "cluster.local"
    timeout: float = 180.0
    log_level: str = "info"


@dataclass
class UpResult:
    already_running: bool
    settings: MeshSettings
    applied: list[dict[str, Any]] = field(default_factory=list)
    pods: int = 0
    cleaned_leftovers: bool = False
    restarted: list[str] = field(default_factory=list)


def console_script(name: str) -> str:
    """The entry point installed next to this interpreter (the venv), else PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise AmbientctlError(f"cannot find the `{name}` program",
                              "install the project (`make setup`) so its console scripts exist")
    return found


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def is_running(mesh: MeshContext) -> bool:
    settings = mesh.settings
    return settings is not None and mesh.processes.alive("controller")


def wait_until(predicate: Callable[[], str | None], timeout: float, what: str,
               check_alive: Callable[[], str | None], log_file: str,
               progress: Progress | None = None, stable_for: float = 0.0) -> None:
    """Poll `predicate` (None when satisfied, else what is still missing) until it
    has held for `stable_for` seconds: a pod that starts and crashes in a loop is
    Running for an instant, which is not ready."""
    deadline = time.monotonic() + timeout
    missing = "not checked yet"
    held_since: float | None = None
    while time.monotonic() < deadline:
        dead = check_alive()
        if dead:
            raise StartupFailed(what, dead, log_file)
        try:
            result = predicate()
        except AmbientctlError as e:
            result = e.message
        if result is None:
            held_since = held_since if held_since is not None else time.monotonic()
            if time.monotonic() - held_since >= stable_for:
                return
            time.sleep(0.25)
            continue
        held_since = None
        if result != missing and progress is not None:
            progress.update(result)
        missing = result
        time.sleep(0.25)
    raise StartupFailed(what, f"still waiting after {timeout:.0f}s: {missing}", log_file)


def _last_lines(path: Path, n: int = 5) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except FileNotFoundError:
        return ""
    return "\n    ".join(lines)


def process_env() -> dict[str, str]:
    """Put this interpreter's bin directory (the venv) first on PATH: the node agent
    starts pods (and the controller names waypoint pods) by program name."""
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    parts = [p for p in path.split(os.pathsep) if p and p != bindir]
    return {"PATH": os.pathsep.join([bindir, *parts])}


class LocalMesh:
    def __init__(self, mesh: MeshContext) -> None:
        self.mesh = mesh
        self.layout = mesh.layout

    @property
    def procs(self) -> ProcessTable:
        return self.mesh.processes

    # ---- up ----------------------------------------------------------------------
    def up(self, opts: UpOptions, progress: Progress) -> UpResult:
        runtime = self.mesh.runtime("up")
        if is_running(self.mesh):
            settings = self.mesh.require_settings()
            restarted = []
            for name in settings.nodes:
                if self.procs.restart_if_dead(name, process_env()) is not None:
                    restarted.append(name)
            if restarted:
                progress.step(f"Restarting stopped node agents: {', '.join(restarted)}")
                with AdminClient(settings.admin_addr, self.layout.admin_token_file) as admin:
                    self._wait_agents(settings, runtime, opts, progress, admin)
                progress.done(f"Restarted {', '.join(restarted)}; connected, config ACKed")
            return UpResult(True, settings, restarted=restarted)
        cleaned = False
        if not find(self.layout).empty():
            progress.step("Removing what a previous mesh left behind")
            self.down(progress=None)
            cleaned = True
            progress.done("Removed leftovers of a previous run")
        manifests = self._manifests(opts)
        for port in (opts.grpc_port, opts.admin_port):
            if not port_free(port):
                raise AmbientctlError(
                    f"port 127.0.0.1:{port} is already in use",
                    "another mesh may be running (`ambientctl --cluster NAME status`); "
                    "pick other ports with --grpc-port/--admin-port")
        names = [f"node-{i}" for i in range(1, opts.nodes + 1)]
        settings = MeshSettings(
            cluster=self.layout.cluster, nodes=names, grpc_port=opts.grpc_port,
            admin_port=opts.admin_port, trust_domain=opts.trust_domain,
            manifests=str(opts.manifests_dir) if opts.manifests_dir else "demo")
        self.layout.create()
        self.layout.save_settings(settings)
        secret = load_or_create_secret(self.layout.node_secret_file)

        self._start_controller(settings, opts, progress)
        admin = AdminClient(settings.admin_addr, self.layout.admin_token_file,
                            str(self.layout.log_file("controller")))
        with admin:
            self._start_agents(settings, runtime, secret, opts, progress, admin)
            applied = self._apply(manifests, admin, progress)
            pods = self._wait_workloads(admin, opts, progress)
        return UpResult(False, settings, applied, pods, cleaned)

    def _manifests(self, opts: UpOptions) -> list[Manifest]:
        if opts.manifests_dir is None:
            from ambientctl.demo.manifests import render
            from mesh.config import parse_documents

            return [Manifest(n, t, parse_documents(t, n)) for n, t in render()]
        if not opts.manifests_dir.is_dir():
            raise BadArgument(f"{opts.manifests_dir} is not a directory",
                              "-f takes a directory of Kubernetes-style YAML files")
        return load((str(opts.manifests_dir),))

    def _dead(self, component: str) -> Callable[[], str | None]:
        def check() -> str | None:
            record = self.procs.get(component)
            if record is None or is_alive(record):
                return None
            tail = _last_lines(self.layout.log_file(component))
            return f"{component} exited" + (f"; last log lines:\n    {tail}" if tail else "")
        return check

    def _start_controller(self, settings: MeshSettings, opts: UpOptions,
                          progress: Progress) -> None:
        progress.step("Starting the controller")
        argv = [console_script("ambient-controller"),
                "--config-dir", str(self.layout.config_dir),
                "--state-dir", str(self.layout.controller_state),
                "--grpc-addr", settings.grpc_addr, "--admin-addr", settings.admin_addr,
                "--trust-domain", settings.trust_domain, "--log-level", opts.log_level]
        record = self.procs.start("controller", argv, process_env())
        admin = AdminClient(settings.admin_addr, timeout=2)

        def answers() -> str | None:
            try:
                admin.status()
            except AmbientctlError:
                return "waiting for the admin API"
            return None

        with admin:
            wait_until(answers, 30, "the controller", self._dead("controller"),
                       str(self.layout.log_file("controller")), progress)
        progress.done(f"Controller running (pid {record.pid}), admin API on "
                      f"{settings.admin_addr}, config push on {settings.grpc_addr}")

    def _start_agents(self, settings: MeshSettings, runtime: LocalRuntime, secret: bytes,
                      opts: UpOptions, progress: Progress, admin: AdminClient) -> None:
        progress.step(f"Creating {len(settings.nodes)} local nodes")
        for name in settings.nodes:
            node = runtime.create_node(name)
            progress.update(f"{name}: netns {node.netns}, pods {node.pod_cidr}")
        progress.done(f"Nodes {', '.join(settings.nodes)} created")
        progress.step("Starting node agents")
        agent = console_script("ambient-nodeagent")
        for name in settings.nodes:
            state = self.layout.node_state(name)
            state.mkdir(parents=True, exist_ok=True)
            token_file = self.layout.node_token_file(name)
            token_file.touch(mode=0o600)
            token_file.write_text(derive_node_token(secret, name))
            self.procs.start(name, [
                agent, "--node", name, "--cluster", settings.cluster,
                "--controller", settings.grpc_addr, "--token-file", str(token_file),
                "--state-dir", str(state)], process_env())
        self._wait_agents(settings, runtime, opts, progress, admin)
        progress.done(f"Node agents connected, config ACKed: {', '.join(settings.nodes)}")

    def _wait_agents(self, settings: MeshSettings, runtime: LocalRuntime, opts: UpOptions,
                     progress: Progress, admin: AdminClient) -> None:
        def agents_ready() -> str | None:
            proxies = {p.get("name"): p for p in admin.status().get("proxies", [])}
            for name in settings.nodes:
                p = proxies.get(name)
                if p is None or not p.get("connected"):
                    return f"{name}: waiting for the agent to connect"
                if p.get("lastNack"):
                    return f"{name}: rejected its config: {p['lastNack']}"
                if not p.get("inSync"):
                    return f"{name}: waiting for the config ACK"
            reports = agent_reports(self.mesh, runtime, settings.nodes)
            for r in reports:
                if r.status is None:
                    return f"{r.node}: agent endpoint not answering yet ({r.error})"
            return None

        deadline = opts.timeout
        for name in settings.nodes:
            wait_until(agents_ready, deadline, f"node agent {name}", self._dead(name),
                       str(self.layout.log_file(name)), progress)

    def _apply(self, manifests: list[Manifest], admin: AdminClient,
               progress: Progress) -> list[dict[str, Any]]:
        progress.step("Applying workloads")
        results: list[dict[str, Any]] = []
        for m in manifests:
            if m.documents:
                progress.update(m.name)
                results.extend(admin.apply(m.text, m.name))
        progress.done(f"Applied {len(results)} objects from {len(manifests)} files")
        return results

    def _wait_workloads(self, admin: AdminClient, opts: UpOptions, progress: Progress) -> int:
        progress.step("Waiting for pods and waypoints")
        count = 0

        def ready() -> str | None:
            nonlocal count
            status = admin.status()
            pods = status.get("pods", {})
            count = int(pods.get("total", 0))
            if pods.get("running", 0) < count:
                waiting = sorted(
                    f"{p['metadata']['namespace']}/{p['metadata']['name']}"
                    for p in admin.list_objects("Pod")
                    if p.get("status", {}).get("phase") != "Running")
                return (f"pods running {pods.get('running', 0)}/{count}; not running: "
                        f"{', '.join(waiting)} (see `ambientctl logs NS/POD`)")
            waiting = [w["name"] for w in status.get("waypoints", []) if not w.get("ready")]
            if waiting:
                return f"waypoint {', '.join(waiting)} not ready"
            behind = [p["name"] for p in status.get("proxies", [])
                      if p.get("connected") and not p.get("inSync")]
            if behind:
                return f"config not ACKed yet by {', '.join(behind)}"
            return None

        wait_until(ready, opts.timeout, "the workloads", self._dead("controller"),
                   str(self.layout.log_file("controller")), progress, stable_for=3.0)
        progress.done(f"{count} pods running, waypoints ready, every proxy in sync")
        return count

    # ---- down --------------------------------------------------------------------
    def down(self, progress: Progress | None) -> tuple[Traces, Traces]:
        """(what was found, what is left); left is empty on success."""
        before = find(self.layout)
        agents = [r for r in self.procs.records() if r.component != "controller"]
        for record in agents + [r for r in self.procs.records() if r.component == "controller"]:
            if progress:
                progress.update(f"stopping {record.component} (pid {record.pid})")
            self.procs.stop(record.component)
        for pid in find(self.layout).processes:
            _kill(pid)
        if progress:
            progress.update("removing namespaces, cgroups and pins")
        self.mesh.runtime("down").destroy()
        shutil.rmtree(self.layout.base, ignore_errors=True)
        for pid in find(self.layout).processes:  # anything started while we were busy
            _kill(pid)
        return before, find(self.layout)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(40):
        if not Path(f"/proc/{pid}").exists():
            return
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


"""The controller process: file source -> registry -> push server, CA and node
service on one gRPC server, admin API on HTTP. `Controller.running()` owns every
task and socket and releases them when it exits (tests use it in-process)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from aiohttp import web

from controller.admin import build_app
from controller.configdir import Change, ConfigDirectory
from controller.metrics import ControllerMetrics
from controller.node_service import add_node_service
from controller.push import PushServer
from controller.registry import Registry
from controller.state import StateDir
from mesh.api import config_pb2 as pb
from mesh.config import ConfigError, ObjectKey
from mesh.ports import CONTROLLER_ADMIN_PORT, CONTROLLER_GRPC_PORT

_log = structlog.get_logger("controller")


@dataclass
class ControllerSettings:
    config_dir: Path
    state_dir: Path
    grpc_addr: str = f"127.0.0.1:{CONTROLLER_GRPC_PORT}"
    admin_addr: str = f"127.0.0.1:{CONTROLLER_ADMIN_PORT}"
    trust_domain: str = "cluster.local"
    # Address written into waypoint pods' command line; defaults to grpc_addr.
    advertise_addr: str = ""
    debounce: float = 0.05
    max_delay: float = 0.5
    watch: bool = True
    enable_ca: bool = True
    # "files": config_dir feeds the registry; "kubernetes": controller.kube feeds it.
    source: str = "files"
    # Lifetime of workload certificates in seconds (None: the CA's 24 h default). Short
    # lifetimes make every node agent renew often: the rotation soak tests use 10 s.
    cert_ttl: float | None = None


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class Controller:
    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.state = StateDir(settings.state_dir)
        self.secret = self.state.node_token_secret()
        self.admin_token = self.state.admin_token()
        self.metrics = ControllerMetrics()
        self.configdir = ConfigDirectory(settings.config_dir)
        self.registry = Registry(
            trust_domain=settings.trust_domain,
            controller_addr=settings.advertise_addr or settings.grpc_addr,
            state=self.state,
            # Kubernetes mode: the kubelets run pods, the controller never places one.
            schedule=settings.source != "kubernetes",
        )
        self.push = PushServer(self.registry, self.secret, self.metrics,
                               debounce=settings.debounce, max_delay=settings.max_delay)
        self.ca: Any = None
        # Kubernetes mode adds its TokenReview authentication here (controller.kube).
        self.interceptors: list[grpc.aio.ServerInterceptor] = []
        # Kubernetes mode: objects the API server holds that were refused (status).
        self.refusals: Callable[[], list[dict[str, Any]]] = list
        self.started_at = time.time()
        self.grpc_port = 0
        self.admin_port = 0

    # -- config -----------------------------------------------------------------------

    def _sync_registry(self) -> None:
        if self.settings.source != "files":
            return
        resources = self.configdir.resources()
        self.registry.replace_config(resources)
        counts: dict[str, int] = {}
        for key in resources:
            counts[key.kind] = counts.get(key.kind, 0) + 1
        for kind in {*counts, *(k for k in _KIND_NAMES)}:
            self.metrics.config_objects.labels(kind).set(counts.get(kind, 0))

    def reload(self) -> bool:
        errors_before = len(self.configdir.errors)
        changed = self.configdir.reload()
        if len(self.configdir.errors) > errors_before:
            self.metrics.config_rejected.labels("file").inc()
        if changed:
            _log.info("config_reloaded", objects=len(self.configdir.objects()))
        self._sync_registry()
        return changed

    def apply(self, text: str, source: str) -> list[Change]:
        try:
            changes = self.configdir.apply(text, source)
        except ConfigError as e:
            self.metrics.config_rejected.labels("apply").inc()
            _log.warning("apply_refused", file=source, error=str(e))
            raise
        self._sync_registry()
        _log.info("applied", file=source,
                  changes=[f"{c.key} {c.action}" for c in changes])
        return changes

    def delete(self, keys: list[ObjectKey]) -> list[Change]:
        changes = self.configdir.delete(keys)
        self._sync_registry()
        _log.info("deleted", changes=[f"{c.key} {c.action}" for c in changes])
        return changes

    # -- reads ------------------------------------------------------------------------

    def list_objects(self, kind: str) -> list[dict[str, Any]]:
        if kind == "Pod":
            return [p.to_resource() for _, p in sorted(self.registry.view().pods.items())]
        out = []
        view = self.registry.view()
        for obj in self.registry.objects(kind):
            data = obj.to_dict()
            if kind == "Service":
                sv = view.services.get((obj.namespace, obj.name))
                if sv is not None and sv.vips:
                    data.setdefault("spec", {})["clusterIP"] = sv.vips[0]
            out.append(data)
        return out

    def node_objects(self) -> list[dict[str, Any]]:
        connected = {r.name for r in self.push.records.values()
                     if r.kind == pb.NODE and r.connected}
        view = self.registry.view()
        return [{
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": n.name},
            "spec": {"podCIDRs": list(n.pod_cidrs)},
            "status": {"connected": n.name in connected,
                       "pods": len(view.pods_by_node.get(n.name, []))},
        } for n in sorted(view.nodes.values(), key=lambda n: n.name)]

    def config_dump(self, name: str) -> tuple[dict[str, Any], pb.Snapshot] | None:
        view = self.registry.view()
        records = {r.display_name: r for r in self.push.records.values()}
        if name in view.nodes:
            kind, ns, n = pb.NODE, "", name
        else:
            ns, _, n = name.rpartition("/")
            matches = [ref for ref in view.waypoints if ref[1] == n and (not ns or ref[0] == ns)]
            if len(matches) != 1:
                return None
            kind, (ns, n) = pb.WAYPOINT, matches[0]
        content = self.push.content_for(kind, ns, n)
        rec = records.get(f"{ns}/{n}" if ns else n)
        info = {"type": "node" if kind == pb.NODE else "waypoint", "name": name,
                "latestVersion": content.version,
                "ackedVersion": rec.acked_version if rec else "",
                "connected": rec.connected if rec else False,
                "lastNack": rec.last_nack if rec else None}
        return info, content.message()

    def status(self) -> dict[str, Any]:
        view = self.registry.view()
        proxies = self.push.status()
        enrolled = sorted(f"{p.namespace}/{p.name}" for p in view.pods.values() if p.enrolled)
        certs: dict[str, Any] = {"enabled": self.ca is not None}
        if self.ca is not None:
            certs["roots"] = [{
                "subject": r.subject, "fingerprintSha256": r.fingerprint_sha256,
                "notAfter": r.not_after.isoformat(), "signing": r.signing,
            } for r in self.ca.roots()]
            certs["issued"] = [r.as_dict() for r in self.ca.issued()]
        nodes = self.node_objects()
        refused = self.refusals()
        healthy = (not self.configdir.errors and not refused
                   and all(p["connected"] and p["inSync"] and not p["lastNack"]
                           for p in proxies if p["connected"]))
        return {
            "controller": {
                "healthy": healthy, "uptimeSeconds": round(time.time() - self.started_at, 1),
                "trustDomain": self.settings.trust_domain,
                "configDir": str(self.settings.config_dir),
                "grpcPort": self.grpc_port, "adminPort": self.admin_port,
                "objects": len(self.configdir.objects()),
                "configErrors": [i.as_dict() for i in self.configdir.errors] + refused,
            },
            "nodes": nodes,
            "proxies": proxies,
            "namespaces": [{"name": n, "enrolled": n in view.enrolled_namespaces}
                           for n in sorted(view.namespaces)],
            "waypoints": [{
                "name": f"{ns}/{n}", "addresses": wp.addresses,
                "services": [f"{a}/{b}" for a, b in wp.services],
                "ready": bool(wp.addresses),
            } for (ns, n), wp in sorted(view.waypoints.items())],
            "enrolledPods": enrolled,
            "pods": {"total": len(view.pods),
                     "running": sum(1 for p in view.pods.values() if p.ready),
                     "pending": sum(1 for p in view.pods.values() if p.node is None)},
            "certificates": certs,
        }

    # -- serving ----------------------------------------------------------------------

    def _wire_ca(self, server: grpc.aio.Server) -> None:
        if not self.settings.enable_ca:
            return
        try:
            from controller.ca_service import add_certificate_service
            from controller.certificates import RecordingCertificateAuthority
        except ImportError as e:
            _log.warning("ca_unavailable", error=str(e))
            return
        ttl: dict[str, Any] = {}
        if self.settings.cert_ttl is not None:
            ttl["default_ttl"] = dt.timedelta(seconds=self.settings.cert_ttl)
        self.ca = RecordingCertificateAuthority.load_or_create(
            self.settings.state_dir / "ca", self.settings.trust_domain, **ttl)
        add_certificate_service(server, self.ca, self.registry, self.secret,
                                kubernetes=self.settings.source == "kubernetes",
                                metrics=self.metrics)

    async def _watch(self) -> None:
        import watchfiles

        async for _ in watchfiles.awatch(self.settings.config_dir, debounce=50, step=20,
                                         recursive=False):
            try:
                self.reload()
            except Exception:  # a bad file must never stop the watcher
                _log.exception("reload_failed")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Controller]:
        """Serve until the block exits; ports are bound when it is entered."""
        self.reload()
        server = grpc.aio.server(interceptors=self.interceptors, options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ])
        self.push.add_to_server(server)
        add_node_service(server, self.registry, self.secret)
        self._wire_ca(server)
        host, port = _split(self.settings.grpc_addr)
        self.grpc_port = server.add_insecure_port(f"{host}:{port}")
        if not self.grpc_port:
            raise OSError(f"cannot listen on {self.settings.grpc_addr} for gRPC")
        await server.start()
        runner = web.AppRunner(build_app(self), access_log=None)
        await runner.setup()
        ahost, aport = _split(self.settings.admin_addr)
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in ahost else socket.AF_INET)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((ahost, aport))
            except OSError as e:
                sock.close()
                raise OSError(f"cannot listen on {self.settings.admin_addr} for the admin "
                              f"API: {e}") from e
            self.admin_port = sock.getsockname()[1]
            await web.SockSite(runner, sock).start()
            _log.info("controller_started", grpc=f"{host}:{self.grpc_port}",
                      admin=f"{ahost}:{self.admin_port}", config_dir=str(self.settings.config_dir),
                      trust_domain=self.settings.trust_domain)
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self.push.run())]
                if self.settings.watch:
                    tasks.append(tg.create_task(self._watch()))
                try:
                    yield self
                finally:
                    for t in tasks:
                        t.cancel()
        finally:
            await server.stop(grace=0.5)
            await runner.cleanup()


_KIND_NAMES = ("Namespace", "Pod", "Deployment", "Service", "EndpointSlice", "Gateway",
               "HTTPRoute", "PeerAuthentication", "AuthorizationPolicy", "TrafficPolicy")

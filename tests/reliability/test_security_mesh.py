"""Security properties of a running mesh (real controller, node agents, pods):

- STRICT refuses plaintext on every pod port (v4 and v6), PERMISSIVE as the control;
- a node agent cannot obtain the identity of a pod on another node;
- a pod cannot use the controller's admin API or its gRPC services without credentials;
- no private key is logged or written world-readable anywhere the mesh writes."""

from __future__ import annotations

import asyncio
import os
import random
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from mesh.identity.ca_client import CertificateClient
from mesh.identity.csr import build_csr, generate_key
from mesh.identity.errors import CertificateRefusedError
from mesh.identity.node_token import derive_node_token
from mesh.identity.spiffe import SpiffeId
from tests.e2e.mesh_harness import wait_for
from tests.reliability.harness import ReliabilityMesh, probe, reliability_mesh, wait_serving
from tests.topologies import PY, SERVE, SLEEP, documents, namespace, pod, strict

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

TOPOLOGY = documents(
    namespace("sec"),
    namespace("perm"),
    namespace("legacy", ambient=False),
    strict("sec"),
    pod("vault", "sec", "node-2", SERVE, "vault", "app: vault"),
    pod("client", "sec", "node-1", SLEEP, "client"),
    pod("open", "perm", "node-2", SERVE, "open", "app: open"),
    pod("outsider", "legacy", "node-1", SLEEP),
)


@pytest.fixture(scope="module")
def mesh() -> Iterator[ReliabilityMesh]:
    with reliability_mesh("ams" + secrets.token_hex(2)) as m:
        m.apply(TOPOLOGY)
        pods = m.wait_pods(enrolled=("sec/client", "sec/vault", "perm/open"),
                           outside=("legacy/outsider",))
        wait_serving(m, pods["sec/client"], f"http://{pods['sec/vault'].ip}:8080/")
        yield m


def test_strict_refuses_plaintext_on_every_pod_port(mesh: ReliabilityMesh) -> None:
    outsider = mesh.runtime.get_pod("legacy", "outsider")
    vault = mesh.runtime.get_pod("sec", "vault")
    open_ = mesh.runtime.get_pod("perm", "open")
    # The control: the same probe reaches a PERMISSIVE pod's app in plaintext.
    wait_for("PERMISSIVE pod answers plaintext", lambda: "hello from open" in probe(
        mesh, outsider, str(open_.ip), [8080])[0]["data"], timeout=20)
    rng = random.Random(11)
    ports = sorted({8080, 15001, 15006, 15008, 15020, 15090, 22, 53, 80, 443, 1, 65535,
                    *rng.sample(range(1024, 65535), 40)})
    results = probe(mesh, outsider, str(vault.ip), ports)
    results += probe(mesh, outsider, str(vault.ip6), [8080, 15006, 15008, 443])
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        assert "hello from" not in r["data"], f"app reached in plaintext: {r}"
        assert not r["data"].startswith("HTTP/"), f"plaintext HTTP answered: {r}"
    print(f"STRICT: {len(results)} pod ports probed in plaintext (v4 + v6): {outcomes}")
    # Mesh traffic to the same pod still flows.
    client = mesh.runtime.get_pod("sec", "client")
    ok = mesh.exec(client, ["curl", "-sS", "-m", "5", f"http://{vault.ip}:8080/"])
    assert ok.returncode == 0 and "hello from vault" in ok.stdout, ok.stderr


def test_a_node_agent_cannot_obtain_another_nodes_pod_identity(mesh: ReliabilityMesh) -> None:
    secret = (mesh.controller_state / "node-token.secret").read_bytes()
    vault_id = SpiffeId.for_workload("sec", "vault")  # vault runs on node-2

    async def ask(node: str, token_node: str, pod_ns: str, pod_name: str) -> str:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.grpc_port}") as ch:
            client = CertificateClient(ch, node, derive_node_token(secret, token_node))
            try:
                signed = await client.create_certificate(
                    build_csr(generate_key(), vault_id), pod_ns, pod_name)
            except CertificateRefusedError as e:
                return f"{e.code}: {e}"
            return f"ISSUED {signed.identity}"

    answers = {
        "node-1 asks for node-2's pod": asyncio.run(ask("node-1", "node-1", "sec", "vault")),
        "node-1 claims to be node-2": asyncio.run(ask("node-2", "node-1", "sec", "vault")),
        "node-1 asks for an unknown pod": asyncio.run(ask("node-1", "node-1", "sec", "nope")),
        "node-1 asks for its pod with vault's CSR": asyncio.run(
            ask("node-1", "node-1", "sec", "client")),
    }
    for what, answer in answers.items():
        print(f"{what}: {answer[:140]}")
    assert answers["node-1 asks for node-2's pod"].startswith("PERMISSION_DENIED")
    assert answers["node-1 claims to be node-2"].startswith("UNAUTHENTICATED")
    assert answers["node-1 asks for an unknown pod"].startswith("PERMISSION_DENIED")
    assert answers["node-1 asks for its pod with vault's CSR"].startswith("INVALID_ARGUMENT")
    assert "certificate.refused" in mesh.logs("controller")
    # The legitimate owner still gets it.
    assert asyncio.run(ask("node-2", "node-2", "sec", "vault")) == f"ISSUED {vault_id}"


GRPC_WITHOUT_TOKEN = """
import asyncio, sys
import grpc
from mesh.api import ca_pb2, ca_pb2_grpc, config_pb2, config_pb2_grpc
async def main():
    async with grpc.aio.insecure_channel(sys.argv[1]) as ch:
        out = []
        try:
            await ca_pb2_grpc.CertificateServiceStub(ch).CreateCertificate(
                ca_pb2.CreateCertificateRequest(csr_pem="x", pod_namespace="sec",
                                                pod_name="vault"), timeout=5)
            out.append("CA: OK")
        except grpc.aio.AioRpcError as e:
            out.append(f"CA: {e.code().name}")
        call = config_pb2_grpc.ConfigServiceStub(ch).Subscribe(timeout=5)
        try:
            await call.write(config_pb2.SubscribeRequest(hello=config_pb2.Hello(
                kind=config_pb2.NODE, name="node-1")))
            await call.read()
            out.append("Subscribe: OK")
        except grpc.aio.AioRpcError as e:
            out.append(f"Subscribe: {e.code().name}")
        print(" ".join(out))
asyncio.run(main())
"""


def test_a_pod_cannot_use_the_controller_without_credentials(mesh: ReliabilityMesh) -> None:
    """The admin API listens on the controller's loopback, which no pod netns reaches;
    the one controller port pods reach (the node relay to gRPC) demands a node token."""
    apply = (b'POST /v1/apply HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
             b'Content-Length: 2\r\nConnection: close\r\n\r\n{}')
    summary = []
    for ns, name in (("legacy", "outsider"), ("sec", "client")):
        src = mesh.runtime.get_pod(ns, name)
        targets = ["127.0.0.1", *(str(mesh.runtime.get_node(n).host_ip)
                                  for n in mesh.node_names)]
        for host in targets:
            for r in probe(mesh, src, host, [mesh.admin_port, mesh.grpc_port, 15014], apply):
                summary.append(f"{name}->{host}:{r['port']} {r['outcome']}")
                head = r["data"].split("\r\n", 1)[0]
                assert not head.startswith("HTTP/1.1 2"), f"admin write from a pod: {r}"
                if head.startswith("HTTP/"):
                    assert " 401 " in head or " 400 " in head, r
        relay = f"{mesh.runtime.get_node(src.node).host_ip}:{mesh.grpc_port}"
        out = mesh.exec(src, [PY, "-c", GRPC_WITHOUT_TOKEN, relay], timeout=30)
        assert out.returncode == 0, out.stderr
        print(f"{ns}/{name} via relay {relay} without a token: {out.stdout.strip()}")
        assert out.stdout.split() == ["CA:", "UNAUTHENTICATED", "Subscribe:", "UNAUTHENTICATED"]
    print("admin API from pods: " + ", ".join(summary))
    # From the controller's own host (root netns), an admin write without the token is 401.
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{mesh.admin_port}/v1/apply", data=b"{}",
                                 method="POST", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 401


# A real PEM private key block, not just the words (source files mention them).
PEM_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=\r\n]{40,}"
                     rb"-----END [A-Z ]*PRIVATE KEY-----")


def files_under(*roots: Path) -> Iterator[Path]:
    for root in roots:
        if root.is_dir():
            for p in root.rglob("*"):
                if p.is_file() and not p.is_symlink():
                    yield p


def mesh_pids(mesh: ReliabilityMesh) -> set[int]:
    """The mesh's processes and all their descendants (pods' apps included)."""
    pids = {p.pid for p in mesh.procs.values() if p.poll() is None}
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in pids:
                pids.add(child)
                todo.append(child)
    return pids


def files_opened_by(pids: set[int]) -> Iterator[Path]:
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = Path(os.readlink(fd))
            except OSError:
                continue
            if target.is_absolute() and target.is_file():
                yield target


def test_no_private_key_is_logged_or_world_readable(mesh: ReliabilityMesh) -> None:
    """After certificates were issued to every pod and the waypoint-less mesh ran
    traffic: every file holding a private key is 0600 (dirs 0700 up to the state
    root), and no log line holds key material."""
    roots = [mesh.root, mesh.runtime.state_dir]
    key_files, logs_scanned, scanned = [], 0, 0
    for path in files_under(*roots):
        scanned += 1
        data = path.read_bytes()
        mode = stat.S_IMODE(path.stat().st_mode)
        if PEM_KEY.search(data):
            key_files.append(f"{path.relative_to(mesh.root.parent)} {oct(mode)}")
            assert mode & 0o077 == 0, f"private key readable by others: {path} {oct(mode)}"
            assert path.suffix != ".log", f"private key in a log: {path}"
            parent = path.parent
            while parent != mesh.root.parent and parent != Path("/"):
                assert stat.S_IMODE(parent.stat().st_mode) & 0o002 == 0, parent
                parent = parent.parent
        if path.suffix in (".log", ".jsonl"):
            logs_scanned += 1
            assert b"PRIVATE KEY" not in data and b"BEGIN EC" not in data, path
            assert not PEM_KEY.search(data), path
    # Files the mesh's own processes (controller, agents and their children) hold
    # open outside the state roots: none may hold a key readable by others. Only our
    # processes are looked at: other programs on the machine are not ours to judge.
    for path in files_opened_by(mesh_pids(mesh)):
        if any(path.is_relative_to(r) for r in roots):
            continue
        try:
            data = path.read_bytes() if path.stat().st_size <= 1 << 20 else b""
        except OSError:
            continue
        if PEM_KEY.search(data):
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"key readable: {path}"
    # Keys of workloads live only in the node agents' memory (memfd into SSLContext).
    agents = [mesh.procs[n].pid for n in mesh.node_names]
    memfds = sum(1 for pid in agents for fd in Path(f"/proc/{pid}/fd").iterdir()
                 if "memfd:" in os.readlink(fd))
    print(f"key hygiene: {scanned} files scanned ({logs_scanned} logs), files with a key: "
          f"{key_files}; open memfds in agents: {memfds}")
    assert key_files, "the CA key was not found: the scan looks in the wrong place"
    assert all(" 0o600" in f for f in key_files)

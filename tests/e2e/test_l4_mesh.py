"""The L4 data path end to end: real controller and node agents, real pods, curl."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.mesh_harness import LocalMesh, local_mesh, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

HELLO = str(Path(__file__).parent / "apps" / "hello.py")
PY = sys.executable


def pod(name: str, ns: str, node: str, command: list[str], sa: str = "default",
        labels: str = "") -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{{labels}}}
spec:
  nodeName: {node}
  serviceAccountName: {sa}
  containers:
  - name: main
    command: {command!r}
"""


TOPOLOGY = "\n---\n".join([
    """
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels:
    ambientmesh.io/dataplane-mode: ambient
""",
    """
apiVersion: v1
kind: Namespace
metadata:
  name: legacy
""",
    pod("server-1", "demo", "node-1", [PY, HELLO, "8080"], "server", "app: server"),
    pod("server-2", "demo", "node-2", [PY, HELLO, "8080"], "server", "app: server"),
    pod("client", "demo", "node-1", ["sleep", "infinity"], "client"),
    pod("outsider", "legacy", "node-2", ["sleep", "infinity"]),
    """
apiVersion: v1
kind: Service
metadata:
  name: server
  namespace: demo
spec:
  selector:
    app: server
  ports:
  - name: http
    port: 80
    targetPort: 8080
""",
])


@pytest.fixture(scope="module")
def mesh() -> Iterator[LocalMesh]:
    import secrets

    with local_mesh("ame" + secrets.token_hex(2)) as m:
        m.apply(TOPOLOGY)
        yield m


def curl(mesh: LocalMesh, ns: str, name: str, url: str) -> str:
    client = mesh.pod(ns, name)
    out = mesh.exec(client, ["curl", "-sS", "-m", "5", url])
    assert out.returncode == 0, f"curl {url} failed: {out.stderr}"
    return out.stdout


def test_service_reached_over_mtls_on_both_nodes(mesh: LocalMesh) -> None:
    mesh.pod("demo", "server-1", enrolled=True)
    mesh.pod("demo", "server-2", enrolled=True)
    mesh.pod("demo", "client", enrolled=True)
    wait_for("hello from server", lambda: "hello from" in curl(
        mesh, "demo", "client", "http://server.demo/"))
    answers = {curl(mesh, "demo", "client", "http://server.demo/").strip() for _ in range(6)}
    assert answers == {"hello from server-1", "hello from server-2"}
    metrics = mesh.metrics("node-1")
    assert 'connection_security_policy="mutual_tls"' in metrics
    assert 'reporter="source"' in metrics

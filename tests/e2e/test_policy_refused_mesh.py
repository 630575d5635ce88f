"""Real traffic (local mesh: controller and node agent processes, pods, curl): a
connection an ALLOW policy refuses stays refused when the policy's file stops
validating while the controller is down (edited by hand into the `source: {}` a
pruning API server would leave, which matches any peer). The restarted controller
refuses the file and keeps the policy in force as a stand-in that allows nothing:
never "no policy" (allow all), never "any peer" (issue 20, finding 2)."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.mesh_harness import LocalMesh, local_mesh, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

HELLO = str(Path(__file__).parent / "apps" / "hello.py")
URL = "http://server.demo/"


def pod(name: str, ns: str, node: str, command: list[str], sa: str, labels: str = "") -> str:
    return (f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, "
            f"labels: {{{labels}}}}}\nspec:\n  nodeName: {node}\n  serviceAccountName: {sa}\n"
            f"  containers: [{{name: main, command: {command!r}}}]\n")


TOPOLOGY = "---\n".join([
    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels: "
    "{ambientmesh.io/dataplane-mode: ambient}\n",
    pod("server", "demo", "node-1", [sys.executable, HELLO, "8080"], "server", "app: server"),
    pod("client", "demo", "node-2", ["sleep", "infinity"], "client"),
    pod("intruder", "demo", "node-2", ["sleep", "infinity"], "intruder"),
    "apiVersion: v1\nkind: Service\nmetadata: {name: server, namespace: demo}\n"
    "spec:\n  selector: {app: server}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n",
])
POLICY = """\
apiVersion: ambientmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: server-from-client, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/demo/sa/client"]}
"""
PRUNED = POLICY.replace('{principals: ["cluster.local/ns/demo/sa/client"]}', "{}")


@pytest.fixture
def mesh() -> Iterator[LocalMesh]:
    with local_mesh("apr" + secrets.token_hex(2)) as m:
        m.apply(TOPOLOGY)
        yield m


def reaches(mesh: LocalMesh, name: str) -> bool:
    out = mesh.exec(mesh.pod("demo", name, enrolled=True),
                    ["curl", "-sS", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}", URL])
    return out.returncode == 0 and out.stdout == "200"


def test_a_refused_connection_stays_refused_when_the_policy_file_breaks(
        mesh: LocalMesh) -> None:
    wait_for("intruder reaches server before any policy", lambda: reaches(mesh, "intruder"))
    mesh.apply(POLICY, file="policy.yaml")
    wait_for("the policy refuses the intruder", lambda: not reaches(mesh, "intruder"))
    assert reaches(mesh, "client")

    mesh.stop_process("controller")
    (mesh.config_dir / "policy.yaml").write_text(PRUNED)
    mesh.start_controller()
    status = mesh.admin("GET", "/v1/status")
    assert [e["message"] for e in status["controller"]["configErrors"]] == [
        "policy.yaml doc 1 AuthorizationPolicy demo/server-from-client: "
        "spec.rules[0].from[0].source: must set at least one field (an empty source would "
        "match any peer)"]
    wait_for("both agents acked the restarted controller's snapshot", lambda: sum(
        1 for p in mesh.admin("GET", "/v1/status")["proxies"]
        if p["type"] == "node" and p["connected"] and p["inSync"]) == 2, timeout=30)
    assert not any(reaches(mesh, "intruder") for _ in range(20))
    # The stand-in allows nothing: the client is refused too until the file is fixed.
    assert not reaches(mesh, "client")
    objects = mesh.admin("GET", "/v1/objects?kind=AuthorizationPolicy")["items"]
    (stand_in,) = objects
    assert stand_in["spec"]["rules"] == []
    assert "ambientmesh.io/refused" in stand_in["metadata"]["annotations"]

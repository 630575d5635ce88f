"""Node agent stop and restart: established connections drain, pods and capture survive."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.e2e.mesh_harness import local_mesh, wait_for
from tests.e2e.test_l4_mesh import TOPOLOGY

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

SLOW_CLIENT = textwrap.dedent(
    """
    import socket, sys, time
    s = socket.create_connection((sys.argv[1], 8080), timeout=10)
    body = b"0123456789"
    s.sendall(b"POST / HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 10\\r\\n\\r\\n" + body[:5])
    print("started", flush=True)
    sys.stdin.readline()          # the test stops the agent here
    s.sendall(body[5:])
    data = b""
    while not data.endswith(body):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    print(data.decode().split("\\r\\n\\r\\n", 1)[1])
    """
)


def test_sigterm_drains_then_a_new_agent_adopts_pods_and_capture() -> None:
    with local_mesh("aml" + secrets.token_hex(2)) as mesh:
        mesh.apply(TOPOLOGY)
        client = mesh.pod("demo", "client", enrolled=True)
        server = mesh.pod("demo", "server-2", enrolled=True)
        assert client.node == "node-1" and server.node == "node-2"
        wait_for("server-2 answering", lambda: mesh.exec(
            client, ["curl", "-sS", "-m", "3", f"http://{server.ip}:8080/"]).stdout
            == "hello from server-2\n")
        app_pids = (client.cgroup_path / "cgroup.procs").read_text().split()

        proc = mesh.runtime.spawn(client, [sys.executable, "-c", SLOW_CLIENT, str(server.ip)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "started"
        agent = mesh.procs["node-1"]
        agent.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert agent.poll() is None, "the agent must wait for the open connection"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=10)
        assert out.strip() == "0123456789", "the connection did not survive the drain"
        assert agent.wait(timeout=10) == 0
        assert '"outcome":"ok"' in mesh.logs("node-1").split("draining")[-1]

        mesh.start_agent("node-1")
        wait_for("new agent ready", lambda: mesh.agent_status("node-1")["connected"])
        status = mesh.pod("demo", "client", enrolled=True) and mesh.agent_status("node-1")
        assert status["bpf"]["healthy"], status["bpf"]
        wait_for("capture through the new agent", lambda: mesh.exec(
            client, ["curl", "-sS", "-m", "3", f"http://{server.ip}:8080/"]).stdout
            == "hello from server-2\n")
        assert (client.cgroup_path / "cgroup.procs").read_text().split() == app_pids, \
            "the pod's app was restarted"

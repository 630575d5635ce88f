"""Node agent restarts lose no new connection: the listener keeper holds the proxy's
listening sockets, so connections made while no agent runs wait in the backlog and
the next agent accepts them on the same sockets (SCM_RIGHTS handover)."""

from __future__ import annotations

import ast
import secrets
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.e2e.mesh_harness import LocalMesh, local_mesh, wait_for
from tests.e2e.test_l4_mesh import TOPOLOGY

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

LOOPING_CLIENT = textwrap.dedent(
    """
    import select, socket, sys, time
    ok = failed = 0
    errors = []
    slowest = 0.0
    while not select.select([sys.stdin], [], [], 0)[0]:
        t = time.monotonic()
        started = time.time()
        try:
            with socket.create_connection((sys.argv[1], 8080), timeout=15) as s:
                s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            if b"hello from" in data:
                ok += 1
            else:
                failed += 1
                errors.append((started, time.time(), repr(data[:80])))
        except OSError as e:
            failed += 1
            errors.append((started, time.time(), repr(e)))
        slowest = max(slowest, time.monotonic() - t)
        time.sleep(0.01)
    print(ok, failed, round(slowest, 3), repr(errors))
    """
)


def restart(mesh: LocalMesh, node: str, sig: int) -> tuple[float, float]:
    """Stop and restart a node agent; returns when it was signalled and when it died."""
    agent = mesh.procs[node]
    signalled = time.time()
    agent.send_signal(sig)
    agent.wait(timeout=15)
    died = time.time()
    mesh.start_agent(node)
    wait_for(f"{node} agent back", lambda: mesh.agent_status(node)["enrolled_pods"],
             timeout=30)
    return signalled, died


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_agent_restart_loses_no_new_connection(sig: int) -> None:
    with local_mesh("amh" + secrets.token_hex(2)) as mesh:
        mesh.apply(TOPOLOGY)
        client = mesh.pod("demo", "client", enrolled=True)
        server = mesh.pod("demo", "server-2", enrolled=True)
        wait_for("server-2 answering", lambda: mesh.exec(
            client, ["curl", "-sS", "-m", "3", f"http://{server.ip}:8080/"]).stdout
            == "hello from server-2\n")
        loop = mesh.runtime.spawn(client, [sys.executable, "-c", LOOPING_CLIENT,
                                           str(server.ip)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert loop.stdin is not None
        kills = []
        try:
            time.sleep(1.0)
            for node in ("node-1", "node-2"):  # the client's side, then the server's
                kills.append(restart(mesh, node, sig))
                time.sleep(1.0)
        finally:
            out, _ = loop.communicate("stop\n", timeout=30)
        ok, failed, slowest, raw = out.split(" ", 3)
        errors = ast.literal_eval(raw)
        # A connection already being proxied when SIGKILL hits dies with the process;
        # every connection *started* while an agent was away must succeed.
        in_flight = [e for e in errors if any(e[0] <= died and e[1] >= signalled
                                              for signalled, died in kills)]
        new = [e for e in errors if e not in in_flight]
        print(f"{signal.Signals(sig).name}: {ok} requests ok, {failed} failed "
              f"({len(in_flight)} in flight at the kill), slowest {slowest}s (waited in the "
              f"backlog while no agent ran), errors: {errors}")
        assert new == [], new
        if sig == signal.SIGTERM:
            assert int(failed) == 0, errors  # a drain keeps established connections
        assert int(ok) > 50

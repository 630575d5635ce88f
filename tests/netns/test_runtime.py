"""The local runtime builds real nodes and pods that route to each other, and leaves
nothing behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mesh.runtime import LocalRuntime, Pod
from mesh.runtime.cgroups import cgroup2_root

pytestmark = pytest.mark.netns

ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys
    srv = socket.socket(socket.AF_INET6)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::", int(sys.argv[1])))
    srv.listen(64)
    print("ready", flush=True)
    while True:
        conn, peer = srv.accept()
        conn.sendall(sys.argv[2].encode())
        conn.close()
    """
)

CLIENT = textwrap.dedent(
    """
    import socket, sys
    for target in sys.argv[1:]:
        host, port = target.rsplit(":", 1)
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3) as s:
            print(target, s.recv(100).decode())
    """
)


def start_echo(rt: LocalRuntime, pod: Pod, port: int) -> subprocess.Popen[str]:
    proc = rt.spawn(pod, [sys.executable, "-c", ECHO_SERVER, str(port), pod.name],
                    stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


NOTHING_LEFT: dict[str, list[str]] = {
    "netns": [], "links": [], "cgroups": [], "etc": [], "state": []}


def leftovers(prefix: str) -> dict[str, list[str]]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    cgroup = cgroup2_root() / prefix
    return {
        "netns": [line for line in netns.splitlines() if line.startswith(prefix)],
        "links": [line for line in links.splitlines() if prefix in line],
        "cgroups": [str(cgroup)] if cgroup.exists() else [],
        "etc": [str(p) for p in Path("/etc/netns").glob(f"{prefix}-*")]
        if Path("/etc/netns").is_dir() else [],
        "state": [str(p) for p in Path("/run/ambientmesh").glob(prefix)],
    }


def test_every_pod_reaches_every_other_across_nodes(runtime: LocalRuntime) -> None:
    for node in ("node-1", "node-2"):
        runtime.create_node(node)
    pods = [
        runtime.create_pod(node, "demo", f"{node}-p{i}")
        for node in ("node-1", "node-2") for i in (1, 2)
    ]
    assert len({p.ip for p in pods}) == 4
    assert {p.node for p in pods} == {"node-1", "node-2"}
    servers = [start_echo(runtime, pod, 7000 + i) for i, pod in enumerate(pods)]
    try:
        targets = [f"{p.ip}:{7000 + i}" for i, p in enumerate(pods)]
        targets += [f"[{p.ip6}]:{7000 + i}" for i, p in enumerate(pods)]
        for client in pods:
            out = runtime.run(client, [sys.executable, "-c", CLIENT, *targets], timeout=20)
            assert out.returncode == 0, out.stderr
            answers = dict(line.split() for line in out.stdout.splitlines())
            expected = {t: pods[i % 4].name for i, t in enumerate(targets)}
            assert answers == expected
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()


def test_pod_processes_run_in_the_pod_cgroup_and_netns(runtime: LocalRuntime) -> None:
    runtime.create_node("node-1")
    pod = runtime.create_pod("node-1", "demo", "web", hosts={"catalog.demo": "10.96.0.10"})
    proc = runtime.spawn(pod, ["sleep", "30"])
    try:
        for _ in range(100):
            if (pod.cgroup_path / "cgroup.procs").read_text().split():
                break
            time.sleep(0.01)
        cg_pids = (pod.cgroup_path / "cgroup.procs").read_text().split()
        assert cg_pids, "the spawned process is not in the pod cgroup"
        ns_pids = subprocess.run(["ip", "netns", "pids", pod.netns], capture_output=True,
                                 text=True).stdout.split()
        assert set(cg_pids) <= set(ns_pids)
        hosts = runtime.run(pod, ["cat", "/etc/hosts"]).stdout
        assert "10.96.0.10 catalog.demo" in hosts
        addrs = runtime.run(pod, ["ip", "-o", "addr", "show", "eth0"]).stdout
        assert str(pod.ip) in addrs and str(pod.ip6) in addrs
        assert [p.key for p in runtime.list_pods(node="node-1")] == ["demo/web"]
        runtime.delete_pod("demo", "web")
        assert proc.wait(timeout=5) != 0
        assert not pod.cgroup_path.exists()
        assert runtime.list_pods() == []
    finally:
        proc.kill()


def test_teardown_leaves_no_trace(cluster_name: str) -> None:
    rt = LocalRuntime(cluster=cluster_name)
    try:
        rt.create_node("node-1")
        rt.create_node("node-2")
        pod = rt.create_pod("node-2", "demo", "a")
        rt.spawn(pod, ["sleep", "60"])
        assert leftovers(cluster_name)["netns"]
    finally:
        rt.destroy()
    assert leftovers(cluster_name) == NOTHING_LEFT


def test_teardown_after_a_failing_test(tmp_path: Path, cluster_name: str) -> None:
    """A test that fails on purpose, run by a real pytest, still leaves nothing."""
    failing = tmp_path / "test_fails_on_purpose.py"
    failing.write_text(textwrap.dedent(
        """
        def test_fails(runtime):
            runtime.create_node("node-1")
            pod = runtime.create_pod("node-1", "demo", "doomed")
            runtime.spawn(pod, ["sleep", "60"])
            raise AssertionError("failing on purpose")
        """
    ))
    (tmp_path / "conftest.py").write_text(
        (Path(__file__).parents[1] / "conftest.py").read_text()
        .replace('"amt" + secrets.token_hex(3)', f'"{cluster_name}"')
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(failing)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert "1 failed" in result.stdout, result.stdout + result.stderr
    assert "failing on purpose" in result.stdout
    assert leftovers(cluster_name) == NOTHING_LEFT

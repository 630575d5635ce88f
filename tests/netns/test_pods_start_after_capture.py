"""Local mode: an enrolled pod's app starts only once the pod is captured, so it never
talks uncaptured (issue 20 finding 5: capture first, whatever the certificate). The
node agent holds the containers back through PodSupervisor's `may_start`."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mesh.api import config_pb2 as pb
from mesh.runtime import LocalRuntime
from nodeagent.pods import PodSupervisor

pytestmark = pytest.mark.netns


def spec(name: str, enrolled: bool) -> pb.PodToRun:
    return pb.PodToRun(namespace="demo", name=name, uid=f"uid-{name}", enrolled=enrolled,
                       containers=[pb.Container(name="main", command=["sleep", "600"])])


def procs(runtime: LocalRuntime, name: str) -> list[str]:
    pod = runtime.get_pod("demo", name)
    return (pod.cgroup_path / "cgroup.procs").read_text().split()


def test_enrolled_pod_containers_wait_for_capture(runtime: LocalRuntime,
                                                  tmp_path: Path) -> None:
    runtime.create_node("node-1")
    captured: set[str] = set()
    pods = PodSupervisor(runtime, "node-1", tmp_path,
                         may_start=lambda s: not s.enrolled or s.name in captured)
    try:
        pods.reconcile([spec("meshed", True), spec("plain", False)], {})
        time.sleep(0.3)
        pods.tick()
        assert procs(runtime, "plain"), "a pod outside the mesh starts at once"
        assert procs(runtime, "meshed") == [], "an enrolled pod ran before its capture"
        captured.add("meshed")  # what the agent's enrollment does next
        pods.tick()
        deadline = time.monotonic() + 5
        while not procs(runtime, "meshed") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert procs(runtime, "meshed")
    finally:
        pods.stop_all()

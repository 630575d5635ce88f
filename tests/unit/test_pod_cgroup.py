"""Finding a Kubernetes pod's pod-level cgroup (the parent of all its containers'
cgroups) from what /proc/<pid>/cgroup says, for both kubelet cgroup drivers and every
QoS class; then PodLocator over a /proc and a cgroup tree laid out as a node's are.
Enrolling that cgroup is what makes outbound capture cover every container."""

from __future__ import annotations

from pathlib import Path

import pytest

from ebpf import EnrolledPod, EnrollmentError
from nodeagent.k8s_pods import PodLocator, cgroup_of, pod_cgroup, runnable

UID = "8d5c2a4e-1b2f-4c3d-9e8f-0a1b2c3d4e5f"
U_ = UID.replace("-", "_")
OTHER = "0f0e0d0c-0b0a-4908-8706-050403020100"
CID = "3f1c9a7be2d4" * 5 + "abcd"  # 64 hex, as containerd's
SANDBOX = "9a8b7c6d5e4f" * 5 + "0123"

SYSTEMD = {
    "guaranteed": (f"/kubepods.slice/kubepods-pod{U_}.slice/cri-containerd-{CID}.scope",
                   f"/kubepods.slice/kubepods-pod{U_}.slice"),
    "burstable": (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice"
                  f"/cri-containerd-{CID}.scope",
                  f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice"),
    "besteffort": (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}"
                   f".slice/crio-{CID}.scope",
                   f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}"
                   ".slice"),
}
CGROUPFS = {
    "guaranteed": (f"/kubepods/pod{UID}/{CID}", f"/kubepods/pod{UID}"),
    "burstable": (f"/kubepods/burstable/pod{UID}/{CID}", f"/kubepods/burstable/pod{UID}"),
    "besteffort": (f"/kubepods/besteffort/pod{UID}/{CID}", f"/kubepods/besteffort/pod{UID}"),
}


@pytest.mark.parametrize("qos", ["guaranteed", "burstable", "besteffort"])
@pytest.mark.parametrize("driver", [SYSTEMD, CGROUPFS], ids=["systemd", "cgroupfs"])
def test_pod_level_cgroup_of_a_container_process(driver: dict, qos: str) -> None:
    container, pod = driver[qos]
    assert pod_cgroup(cgroup_of(f"0::{container}\n"), UID) == pod


@pytest.mark.parametrize("qos", ["guaranteed", "burstable", "besteffort"])
@pytest.mark.parametrize("driver", [SYSTEMD, CGROUPFS], ids=["systemd", "cgroupfs"])
def test_every_container_and_nested_scope_of_a_pod_maps_to_the_same_cgroup(
    driver: dict, qos: str,
) -> None:
    container, pod = driver[qos]
    sidecar = container.replace(CID, SANDBOX)
    nested = f"{container}/init.scope"  # a container running its own systemd
    assert {pod_cgroup(p, UID) for p in (container, sidecar, nested)} == {pod}


def test_hybrid_host_uses_the_v2_line_not_the_v1_controllers() -> None:
    text = (f"12:memory:/kubepods/burstable/pod{UID}/{CID}\n"
            f"11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}\n"
            "1:name=systemd:/kubepods/burstable\n"
            f"0::/kubepods/burstable/pod{UID}/{CID}\n")
    assert pod_cgroup(cgroup_of(text), UID) == f"/kubepods/burstable/pod{UID}"


def test_kind_node_nests_kubepods_under_its_own_container_cgroup() -> None:
    path = ("/system.slice/docker-5e1f.scope/kubelet.slice/kubelet-kubepods.slice/"
            f"kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{U_}.slice/"
            f"cri-containerd-{CID}.scope")
    assert pod_cgroup(path, UID) == path.rsplit("/", 1)[0]


def test_path_seen_from_another_cgroup_namespace_keeps_its_dotdots() -> None:
    path = f"/../../kubepods-besteffort-pod{U_}.slice/cri-containerd-{CID}.scope"
    assert pod_cgroup(path, UID) == f"/../../kubepods-besteffort-pod{U_}.slice"


@pytest.mark.parametrize("path", [
    f"/kubepods/burstable/pod{OTHER}/{CID}",                   # another pod
    f"/kubepods.slice/kubepods-pod{OTHER.replace('-', '_')}.slice/cri-containerd-{CID}.scope",
    f"/kubepods/burstable/pod{UID}0/{CID}",                    # not the whole component
    f"/kubepods/burstable/xpod{UID}/{CID}",
    "/system.slice/containerd.service",                        # a host daemon
    "/",
    "",
])
def test_paths_of_other_pods_and_host_processes_are_not_this_pod(path: str) -> None:
    assert pod_cgroup(path, UID) is None


def test_enrolling_the_cgroup_root_is_refused() -> None:
    pod = EnrolledPod(name="demo/web", netns="x", cgroup_id=1)
    with pytest.raises(EnrollmentError, match="cgroup root"):
        pod.check_capturable()
    EnrolledPod(name="demo/web", netns="x", cgroup_id=4242).check_capturable()


# ---- PodLocator over a node-shaped /proc and cgroup tree ------------------------------

def _stat(pid: int, start: int) -> str:
    fields = ["S", "1"] + ["0"] * 17 + [str(start)] + ["0"] * 20
    return f"{pid} (python3) {' '.join(fields)}\n"


def _process(proc: Path, pid: int, cgroup_path: str, start: int) -> None:
    d = proc / str(pid)
    d.mkdir(parents=True)
    (d / "cgroup").write_text(f"0::{cgroup_path}\n")
    (d / "stat").write_text(_stat(pid, start))


@pytest.mark.parametrize("driver", [SYSTEMD, CGROUPFS], ids=["systemd", "cgroupfs"])
def test_locator_returns_the_pod_cgroup_and_the_sandbox_netns(tmp_path: Path,
                                                              driver: dict) -> None:
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    container, pod = driver["burstable"]
    sandbox = container.replace(CID, SANDBOX)
    for p in (container, sandbox, f"{container}/init.scope"):
        (root / p.lstrip("/")).mkdir(parents=True, exist_ok=True)
    _process(proc, 40, sandbox, start=100)            # pause: the oldest
    _process(proc, 41, container, start=150)
    _process(proc, 42, f"{container}/init.scope", start=160)
    _process(proc, 43, container.replace(UID, OTHER).replace(U_, OTHER.replace("-", "_")),
             start=10)                                 # another pod, older: ignored
    _process(proc, 44, "/system.slice/kubelet.service", start=5)

    found = PodLocator(proc, root).locate(UID, [CID])
    assert found is not None
    assert found.cgroup == root / pod.lstrip("/")
    assert found.pid == 40 and found.netns == proc / "40" / "ns" / "net"


def test_locator_resolves_a_path_seen_through_a_cgroup_namespace(tmp_path: Path) -> None:
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    container, pod = SYSTEMD["besteffort"]
    (root / container.lstrip("/")).mkdir(parents=True)
    _process(proc, 7, "/../../" + container.split("/", 3)[3], start=1)
    found = PodLocator(proc, root).locate(UID)
    assert found is not None and found.cgroup == root / pod.lstrip("/")


def test_locator_finds_nothing_before_the_pod_runs(tmp_path: Path) -> None:
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    root.mkdir()
    _process(proc, 9, CGROUPFS["burstable"][0].replace(UID, OTHER), start=1)
    assert PodLocator(proc, root).locate(UID) is None


@pytest.mark.parametrize("phase, ip, host_network, deleting, expected", [
    ("Running", "10.1.2.3", False, False, True),
    ("Pending", "10.1.2.3", False, False, True),     # init containers run now
    ("Pending", "", False, False, False),            # no sandbox network yet
    ("Succeeded", "10.1.2.3", False, False, False),
    ("Failed", "10.1.2.3", False, False, False),
    ("Running", "10.1.2.3", True, False, False),
    ("Running", "10.1.2.3", False, True, False),
])
def test_pods_are_captured_from_the_time_init_containers_run(
    phase: str, ip: str, host_network: bool, deleting: bool, expected: bool,
) -> None:
    meta = {"name": "p", "namespace": "demo"}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    pod = {"metadata": meta, "spec": {"hostNetwork": host_network},
           "status": {"phase": phase, "podIP": ip}}
    assert runnable(pod) is expected

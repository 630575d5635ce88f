"""Multi-container pods, with real programs, real cgroups and real sockets.

Kubernetes gives each container its own cgroup below the pod's. Enrolling the
pod-level cgroup must capture every container (and cgroups nested inside one), and
nothing of a sibling pod; unenrolling must release them all. Processes run in child
cgroups of a local pod (same netns), as a kubelet's containers would."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ebpf import EnrolledPod, EnrollmentError, Redirector
from ebpf.enrollment import cgroup_level
from ebpf.layout import MAX_POD_CGROUP_LEVEL
from mesh.runtime import LocalRuntime, Pod
from nodeagent.enrollment import bpf_record
from nodeagent.k8s_pods import PodLocator, pod_spec, runtime_pod
from tests.netns.ebpf_helpers import (
    CaptureListener,
    enrolled,
    fmt_hostport,
    node_redirector,
    run_json,
    serving,
)

pytestmark = pytest.mark.netns
PORTS = (18081, 18082, 18083)


def in_cgroup(pod: Pod, cgroup: Path) -> Pod:
    """The same pod (netns, IPs) with processes started in `cgroup`: a container."""
    return dataclasses.replace(pod, cgroup_path=cgroup)


@pytest.fixture
def world(runtime: LocalRuntime) -> Iterator[dict[str, Any]]:
    """Pod `multi` with containers a, b and a scope nested in b; pod `sibling` with one
    container; a server pod. Capture loaded, nothing enrolled yet. The runtime fixture
    removes every cgroup (children first) and process, whatever the outcome."""
    runtime.create_node("n1")
    pods = {name: runtime.create_pod("n1", "demo", name) for name in ("multi", "sibling", "srv")}
    multi, sibling = pods["multi"], pods["sibling"]
    cgroups = {
        "a": multi.cgroup_path / "container-a",
        "b": multi.cgroup_path / "container-b",
        "nested": multi.cgroup_path / "container-b" / "nested.scope",
        "sibling": sibling.cgroup_path / "container-a",
    }
    for path in cgroups.values():
        path.mkdir(parents=True)
    containers = {
        "a": in_cgroup(multi, cgroups["a"]),
        "b": in_cgroup(multi, cgroups["b"]),
        "nested": in_cgroup(multi, cgroups["nested"]),
        "pod": multi,  # a process directly in the pod cgroup, as local pods run
        "sibling": in_cgroup(sibling, cgroups["sibling"]),
    }
    srv = pods["srv"]
    addrs = [(str(srv.ip), p) for p in PORTS] + [(str(srv.ip6), p) for p in PORTS]
    with (
        node_redirector(runtime, runtime.get_node("n1")) as redirector,
        serving(runtime, srv, addrs),
        CaptureListener(multi.netns, ("127.0.0.1", 15001), _origin(redirector)) as cap4,
        CaptureListener(multi.netns, ("::1", 15001), _origin(redirector)) as cap6,
    ):
        yield {"rt": runtime, "redirector": redirector, "pods": pods, "cgroups": cgroups,
               "containers": containers, "srv": srv, "captures": (cap4, cap6)}


def _origin(redirector: Redirector) -> Any:
    def describe(conn: socket.socket) -> str:
        ip, port = redirector.original_destination(conn)
        return f"captured {ip} {port}"
    return describe


def _connect(world: dict[str, Any], who: str, dsts: list[tuple[str, int]]) -> list[dict]:
    return run_json(world["rt"], world["containers"][who],
                    ["connect", *(fmt_hostport(*d) for d in dsts)])


def _kinds(results: list[dict]) -> list[str]:
    """"captured" or "direct" per connection, checking the destination it reports."""
    out = []
    for r in results:
        host, port = r["dst"]
        assert r["peer"] == [host, port], f"getpeername() must show the original: {r}"
        kind, ip, reply_port = r["reply"].split()
        assert (ip, int(reply_port)) == (host, port), r
        out.append(kind)
    return out


def test_processes_really_run_in_the_container_cgroups(world: dict[str, Any]) -> None:
    for who in ("a", "nested", "sibling"):
        done = world["rt"].run(world["containers"][who], ["cat", "/proc/self/cgroup"])
        v2 = next(line for line in done.stdout.splitlines() if line.startswith("0::"))
        assert world["cgroups"][who].as_posix().endswith(v2[3:]), (who, v2)


def test_every_container_of_an_enrolled_pod_is_captured_with_its_destination(
    world: dict[str, Any],
) -> None:
    redirector, pods, srv = world["redirector"], world["pods"], world["srv"]
    redirector.enroll(enrolled(pods["multi"]))
    v4 = [(str(srv.ip), p) for p in PORTS]
    v6 = [(str(srv.ip6), p) for p in PORTS]

    for who in ("a", "b", "nested", "pod"):
        assert _kinds(_connect(world, who, v4 + v6)) == ["captured"] * 6, who
    assert _kinds(_connect(world, "sibling", v4 + v6)) == ["direct"] * 6
    cap4, cap6 = world["captures"]
    assert (len(cap4.seen), len(cap6.seen)) == (4 * 3, 4 * 3)


def test_enrolling_one_container_cgroup_captures_only_that_container(
    world: dict[str, Any],
) -> None:
    """The old per-container registration, kept as a witness: it misses container b,
    which is exactly the hole the pod-level enrollment closes."""
    multi = world["pods"]["multi"]
    only_a = EnrolledPod(name="demo/multi", netns=multi.netns,
                         cgroup_path=world["cgroups"]["a"])
    world["redirector"].enroll(only_a)
    dst = [(str(world["srv"].ip), PORTS[0])]
    assert _kinds(_connect(world, "a", dst)) == ["captured"]
    assert _kinds(_connect(world, "b", dst)) == ["direct"]
    assert _kinds(_connect(world, "pod", dst)) == ["direct"]


def test_nearest_enrolled_ancestor_wins(world: dict[str, Any]) -> None:
    """Pod enrolled excluding one port, container b enrolled on its own without
    exclusions: the scope nested in b follows b's config (its nearest enrolled
    ancestor), container a follows the pod's."""
    multi = world["pods"]["multi"]
    port = PORTS[0]
    world["redirector"].enroll(enrolled(multi, outbound_excluded_ports=(port,)))
    world["redirector"].enroll(EnrolledPod(name="demo/multi-b", netns=multi.netns,
                                           cgroup_path=world["cgroups"]["b"]))
    dst = [(str(world["srv"].ip), port), (str(world["srv"].ip), PORTS[1])]
    assert _kinds(_connect(world, "nested", dst)) == ["captured", "captured"]
    assert _kinds(_connect(world, "a", dst)) == ["direct", "captured"]


def test_unenrolling_the_pod_releases_every_container(world: dict[str, Any]) -> None:
    redirector, multi = world["redirector"], world["pods"]["multi"]
    dst = [(str(world["srv"].ip), PORTS[1]), (str(world["srv"].ip6), PORTS[2])]
    record = enrolled(multi)
    redirector.enroll(record)
    for who in ("a", "b", "nested"):
        assert _kinds(_connect(world, who, dst)) == ["captured"] * 2, who
    redirector.unenroll(record)
    assert not redirector.is_enrolled(record)
    for who in ("a", "b", "nested", "pod"):
        assert _kinds(_connect(world, who, dst)) == ["direct"] * 2, who


def test_pod_cgroup_at_the_deepest_level_is_matched_and_one_deeper_is_refused(
    world: dict[str, Any],
) -> None:
    """The ancestor walk's bound: a pod cgroup at MAX_POD_CGROUP_LEVEL captures a task
    nested three levels below it; a pod cgroup one level deeper is refused outright
    instead of looking enrolled while nothing is captured."""
    multi = world["pods"]["multi"]
    deep = multi.cgroup_path
    while cgroup_level(deep) < MAX_POD_CGROUP_LEVEL:
        deep = deep / f"l{cgroup_level(deep) + 1}"
        deep.mkdir()
    task_cgroup = deep / "x" / "y" / "z"
    task_cgroup.mkdir(parents=True)
    world["containers"]["deep"] = in_cgroup(multi, task_cgroup)
    dst = [(str(world["srv"].ip), PORTS[0])]

    world["redirector"].enroll(EnrolledPod(name="demo/deep", netns=multi.netns,
                                           cgroup_path=deep))
    assert _kinds(_connect(world, "deep", dst)) == ["captured"]
    assert _kinds(_connect(world, "a", dst)) == ["direct"], "a is outside the deep pod"

    too_deep = deep / "x"
    with pytest.raises(EnrollmentError, match=f"up to level {MAX_POD_CGROUP_LEVEL}"):
        world["redirector"].enroll(EnrolledPod(name="demo/too-deep", netns=multi.netns,
                                               cgroup_path=too_deep))


def test_kubernetes_pod_found_through_proc_is_enrolled_at_pod_level(
    world: dict[str, Any],
) -> None:
    """The Kubernetes chain end to end, minus the API server: a systemd-driver kubelet
    tree (pause, app and sidecar scopes under kubepods-burstable-pod<uid>.slice),
    found through the real /proc by PodLocator, turned into the agent's enrollment
    record; the app and the sidecar are both captured."""
    rt, multi = world["rt"], world["pods"]["multi"]
    uid = str(uuid.uuid4())
    pod_slice = (multi.cgroup_path / "kubepods.slice" / "kubepods-burstable.slice"
                 / f"kubepods-burstable-pod{uid.replace('-', '_')}.slice")
    scopes = {name: pod_slice / f"cri-containerd-{uuid.uuid4().hex * 2}.scope"
              for name in ("pause", "app", "sidecar")}
    for path in scopes.values():
        path.mkdir(parents=True)
    pause = rt.spawn(in_cgroup(multi, scopes["pause"]), ["sleep", "600"],
                     stdout=subprocess.DEVNULL)
    try:
        procs = scopes["pause"] / "cgroup.procs"
        deadline = time.monotonic() + 10
        while not procs.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.02)  # the shell joins the scope, then execs
        found = PodLocator().locate(uid)
        assert found is not None and found.cgroup == pod_slice
        assert [str(found.pid)] == procs.read_text().split()

        api = {"metadata": {"namespace": "demo", "name": "k8s", "uid": uid},
               "spec": {"containers": [{"name": "app"}, {"name": "sidecar"}]},
               "status": {"phase": "Running", "podIP": str(multi.ip)}}
        ns = {"metadata": {"name": "demo",
                           "labels": {"ambientmesh.io/dataplane-mode": "ambient"}}}
        record = bpf_record(pod_spec(api, ns, "cluster.local"), runtime_pod(api, "n1", found))
        assert record.cgroup_path == pod_slice
        world["redirector"].enroll(record)

        dst = [(str(world["srv"].ip), PORTS[2])]
        for name in ("app", "sidecar"):
            world["containers"][name] = in_cgroup(multi, scopes[name])
            assert _kinds(_connect(world, name, dst)) == ["captured"], name
        assert _kinds(_connect(world, "a", dst)) == ["direct"], "outside the k8s pod slice"
    finally:
        pause.kill()
        pause.wait()

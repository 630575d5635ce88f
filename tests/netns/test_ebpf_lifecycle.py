"""Load once, adopt on restart (even after SIGKILL), uninstall without a trace."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ebpf import AttachmentConflict, MapLayoutMismatch, NotCgroupV2, Redirector, libbpf, uninstall
from ebpf import constants as C
from ebpf.pins import PinLayout
from mesh.runtime import LocalRuntime
from tests.netns.ebpf_helpers import CaptureListener, enrolled, pin_old_map, run_json, serving

pytestmark = pytest.mark.netns
REPO = Path(__file__).resolve().parents[2]
CGROUP_ATTACH_TYPES = (
    C.ATTACH_CGROUP_INET4_CONNECT, C.ATTACH_CGROUP_INET6_CONNECT, C.ATTACH_CGROUP_SOCK_OPS,
    C.ATTACH_CGROUP_INET4_GETPEERNAME, C.ATTACH_CGROUP_INET6_GETPEERNAME,
)


def _attached(path: Path, attach_type: int) -> list[int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return libbpf.prog_query(fd, attach_type)
    finally:
        os.close(fd)


def _start_agent(pin: str, cgroup: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ebpf", "run", "--pin-name", pin, "--cgroup", str(cgroup)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"agent exited with {proc.wait()}"
    return proc, json.loads(line)


def _describe(redirector: Redirector) -> Any:
    def describe(conn: socket.socket) -> str:
        ip, port = redirector.original_destination(conn)
        return f"captured {ip} {port}"
    return describe


def test_agent_killed_with_sigkill_and_restarted_keeps_capturing(
    runtime: LocalRuntime,
) -> None:
    node = runtime.create_node("n1")
    client = runtime.create_pod("n1", "demo", "client")
    srv = runtime.create_pod("n1", "demo", "srv")
    pin = f"{runtime.cluster}-n1"
    ip = str(srv.ip)
    agents: list[subprocess.Popen[str]] = []
    try:
        first, hello = _start_agent(pin, node.cgroup_path)
        agents.append(first)
        assert hello == {"ready": True, "adopted": False}
        with Redirector.open(pin) as reader:
            reader.enroll(enrolled(client))
            before = reader.status()
            outcome: dict[str, Any] = {}
            with (
                serving(runtime, srv, [(ip, 7300)]),
                CaptureListener(client.netns, ("127.0.0.1", 15001), _describe(reader)),
            ):
                loop = threading.Thread(target=lambda: outcome.update(
                    r=run_json(runtime, client, ["loop", "4", f"{ip}:7300"])))
                loop.start()
                time.sleep(1.0)
                first.kill()  # SIGKILL: no cleanup code runs
                first.wait(timeout=10)
                time.sleep(0.5)  # a window with no agent at all
                assert reader.status()["healthy"]
                second, hello = _start_agent(pin, node.cgroup_path)
                agents.append(second)
                assert hello == {"ready": True, "adopted": True}
                loop.join(timeout=60)
            after = reader.status()
        [summary] = outcome["r"]
        assert set(summary["counts"]) == {"captured"}, summary
        assert summary["counts"]["captured"] > 20
        links_before = {p["name"]: p["link_id"] for p in before["programs"] if "link_id" in p}
        links_after = {p["name"]: p["link_id"] for p in after["programs"] if "link_id" in p}
        assert links_before == links_after, "links must be adopted, not recreated"
        progs_after = {p["name"]: p["prog_id"] for p in after["programs"] if "prog_id" in p}
        progs_before = {p["name"]: p["prog_id"] for p in before["programs"] if "prog_id" in p}
        assert all(progs_after[n] != progs_before[n] for n in progs_before), "new code swapped in"
        assert after["healthy"] is False  # this reader still holds the first agent's programs
        with Redirector.open(pin) as fresh:
            assert fresh.status()["healthy"] and fresh.status()["enrolled_pods"] == 1
    finally:
        for agent in agents:
            agent.kill()
            agent.wait(timeout=10)
        uninstall(pin)


def test_second_load_adopts_links_and_state(runtime: LocalRuntime) -> None:
    node = runtime.create_node("n1")
    other = runtime.create_node("n2")
    pod = runtime.create_pod("n1", "demo", "web")
    pin = f"{runtime.cluster}-n1"
    try:
        first = Redirector.load(pin, node.cgroup_path)
        assert not first.adopted
        first.enroll(enrolled(pod))
        s1 = first.status()
        ns_fd = os.open(pod.netns_path, os.O_RDONLY)
        try:
            [first_instance] = libbpf.prog_query(ns_fd, C.ATTACH_SK_LOOKUP)
        finally:
            os.close(ns_fd)
        first.close()
        second = Redirector.load(pin, node.cgroup_path)
        assert second.adopted
        s2 = second.status()
        assert s2["healthy"] and s2["enrolled_pods"] == 1 and s2["inbound_links_attached"] == 1
        assert [p.get("link_id") for p in s1["programs"]] == [
            p.get("link_id") for p in s2["programs"]]
        # The pod's netns runs its own instance of am_sk_lookup (not the pinned
        # template), and the second load swapped in a new one.
        template_id = next(p["id"] for p in s2["programs"] if p["name"] == "am_sk_lookup")
        ns_fd = os.open(pod.netns_path, os.O_RDONLY)
        try:
            [attached] = libbpf.prog_query(ns_fd, C.ATTACH_SK_LOOKUP)
        finally:
            os.close(ns_fd)
        assert attached not in (template_id, first_instance)
        for attach_type in CGROUP_ATTACH_TYPES:
            assert len(_attached(node.cgroup_path, attach_type)) == 1
        second.close()
        with pytest.raises(AttachmentConflict, match="another pin name"):
            Redirector.load(pin, other.cgroup_path)
    finally:
        uninstall(pin)


def test_uninstall_removes_every_attachment_and_pin(runtime: LocalRuntime) -> None:
    node = runtime.create_node("n1")
    client = runtime.create_pod("n1", "demo", "client")
    srv = runtime.create_pod("n1", "demo", "srv")
    pin = f"{runtime.cluster}-n1"
    ip = str(srv.ip)
    try:
        redirector = Redirector.load(pin, node.cgroup_path)
        redirector.enroll(enrolled(client))
        layout = PinLayout(pin)
        assert layout.dir.is_dir()
        # Only root may reach the pinned maps (they steer and record pod traffic).
        for d in (layout.root, layout.dir, layout.maps, layout.progs, layout.links):
            assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
        redirector.uninstall()
        for attach_type in CGROUP_ATTACH_TYPES:
            assert _attached(node.cgroup_path, attach_type) == []
        ns_fd = os.open(client.netns_path, os.O_RDONLY)
        try:
            assert libbpf.prog_query(ns_fd, C.ATTACH_SK_LOOKUP) == []
        finally:
            os.close(ns_fd)
        assert not PinLayout(pin).dir.exists()
        with serving(runtime, srv, [(ip, 7400)]):
            [r] = run_json(runtime, client, ["connect", f"{ip}:7400"])
        assert r["reply"] == f"direct {ip} 7400"
        assert uninstall(pin) is False
    finally:
        uninstall(pin)


def test_refuses_wrong_cgroup_and_foreign_map_layouts(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    node = runtime.create_node("n1")
    with pytest.raises(NotCgroupV2, match="cgroup v2"):
        Redirector.load(f"{runtime.cluster}-x", tmp_path)
    pins = PinLayout(f"{runtime.cluster}-n1")
    pins.create()
    try:
        pin_old_map(pins, "am_pods", "u32", "u32")
        with pytest.raises(MapLayoutMismatch, match="uninstall --pin-name"):
            Redirector.load(pins.name, node.cgroup_path)
    finally:
        uninstall(pins.name)


def test_load_unpins_a_map_an_earlier_version_left(runtime: LocalRuntime) -> None:
    """am_inbound_ips is no longer read by any program: a node upgraded from a version
    that pinned it has it removed at load, not kept (and shown) forever."""
    node = runtime.create_node("n1")
    pins = PinLayout(f"{runtime.cluster}-n1")
    pins.create()
    try:
        pin_old_map(pins, "am_inbound_ips", "u64", "u64")
        assert pins.map("am_inbound_ips").exists()
        redirector = Redirector.load(pins.name, node.cgroup_path)
        try:
            assert not pins.map("am_inbound_ips").exists()
            assert all("am_inbound_ips" not in p for p in redirector.status()["pins"])
            assert "inbound_addresses" not in redirector.status()
        finally:
            redirector.close()
    finally:
        uninstall(pins.name)

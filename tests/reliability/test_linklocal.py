"""Issue 18 finding 2 against a real mesh (controller, node agents, pods): a pod's
addresses that nobody registered — its eth0 IPv6 link-local address, an address added
to eth0 after enrollment — are captured like its pod IPs. A plaintext connection to
them from another pod on the node is refused under STRICT and logged by the node
proxy, instead of reaching the app around the proxy with nothing logged."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mesh.runtime import Pod
from tests.e2e.mesh_harness import LocalMesh, local_mesh, wait_for
from tests.reliability.harness import wait_serving
from tests.topologies import SERVE, SLEEP, documents, namespace, pod, strict

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

TOPOLOGY = documents(
    namespace("sec"),
    namespace("legacy", ambient=False),
    strict("sec"),
    pod("vault", "sec", "node-1", SERVE, "vault", "app: vault"),
    pod("client", "sec", "node-2", SLEEP, "client"),
    pod("outsider", "legacy", "node-1", SLEEP),
    pod("neighbor", "sec", "node-1", SLEEP, "neighbor"),
)


@pytest.fixture(scope="module")
def mesh() -> Iterator[LocalMesh]:
    with local_mesh("aml" + secrets.token_hex(2)) as m:
        m.apply(TOPOLOGY)
        pods = m.wait_pods(enrolled=("sec/client", "sec/vault", "sec/neighbor"),
                           outside=("legacy/outsider",))
        wait_serving(m, pods["sec/client"], f"http://{pods['sec/vault'].ip}:8080/")
        yield m


def link_local(pod: Pod, timeout: float = 10.0) -> str:
    """The pod's eth0 fe80:: address once duplicate address detection is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ip", "-n", pod.netns, "-6", "-o", "addr", "show", "dev", "eth0",
                              "scope", "link"], capture_output=True, text=True, check=True)
        for line in out.stdout.splitlines():
            if "tentative" not in line:
                return line.split()[3].split("/")[0]
        time.sleep(0.1)
    raise AssertionError(f"no usable link-local address on eth0 of {pod.key}")


def curl(mesh: LocalMesh, src: Pod, url: str) -> subprocess.CompletedProcess[str]:
    return mesh.exec(src, ["curl", "-sS", "-g", "-m", "5", url], timeout=20)


def strict_denials(mesh: LocalMesh, node: str, since: int, address: str) -> list[dict[str, Any]]:
    return [r for r in mesh.access_records(node)[since:]
            if r["direction"] == "inbound_plaintext" and r["outcome"] == "denied"
            and "STRICT" in r["reason"] and r["destination_address"].startswith(address)]


def test_link_local_connection_to_strict_pod_is_refused_and_logged(mesh: LocalMesh) -> None:
    vault = mesh.runtime.get_pod("sec", "vault")
    outsider = mesh.runtime.get_pod("legacy", "outsider")
    ll = link_local(vault)
    since = len(mesh.access_records("node-1"))
    # curl and socat: the real clients of the report (`socat - TCP6:[fe80::..%eth0]:9000`).
    web = curl(mesh, outsider, f"http://[{ll}%25eth0]:8080/")
    raw = mesh.exec(outsider, ["sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | socat -T 5 - "
                               f"'TCP6:[{ll}%eth0]:8080'"], timeout=20)
    for done in (web, raw):
        assert "hello from" not in done.stdout, "the STRICT app answered plaintext (link-local)"
    assert web.returncode != 0, web  # reset by the proxy (socat exits 0 on a reset)
    records = wait_for("the node proxy logs the link-local denials", lambda: (
        found if len(found := strict_denials(mesh, "node-1", since, ll)) >= 2 else None))
    assert all(r["destination_workload"] == "sec/vault" for r in records), records
    # Captured, so nothing was dropped in the kernel; the drop counters are exported.
    metrics = mesh.metrics("node-1")
    for reason in ("no_pod", "no_listener", "assign_failed"):
        assert f'ambient_inbound_capture_drops_total{{reason="{reason}"}} 0.0' in metrics
    # Mesh traffic to the same pod still flows.
    client = mesh.runtime.get_pod("sec", "client")
    ok = curl(mesh, client, f"http://{vault.ip}:8080/")
    assert ok.returncode == 0 and "hello from vault" in ok.stdout, ok.stderr


def test_address_added_after_enrollment_is_captured(mesh: LocalMesh) -> None:
    """An address added to the pod's eth0 later (v4 and v6) is captured at once."""
    vault = mesh.runtime.get_pod("sec", "vault")
    outsider = mesh.runtime.get_pod("legacy", "outsider")
    extra4 = str(vault.ip).rsplit(".", 1)[0] + ".254"  # same /24, outside the pod plan
    extra6 = str(vault.ip6).rsplit(":", 1)[0] + ":fe"
    for args in (["addr", "add", f"{extra4}/24", "dev", "eth0"],
                 ["-6", "addr", "add", f"{extra6}/64", "dev", "eth0", "nodad"]):
        subprocess.run(["ip", "-n", vault.netns, *args], check=True, timeout=10)
    since = len(mesh.access_records("node-1"))
    for url in (f"http://{extra4}:8080/", f"http://[{extra6}]:8080/"):
        done = curl(mesh, outsider, url)
        assert "hello from" not in done.stdout, f"{url}: the STRICT app answered plaintext"
    wait_for("the node proxy logs both denials", lambda: (
        strict_denials(mesh, "node-1", since, extra4)
        and strict_denials(mesh, "node-1", since, extra6)))


def test_link_local_from_an_enrolled_pod_never_reaches_the_app(mesh: LocalMesh) -> None:
    """What held before the fix too (kept so): from a mesh pod on the same node the
    connect() is captured outbound first; the original destination carries no scope,
    so the node proxy cannot dial a link-local address (EINVAL, logged as an error),
    and if a later change let it, inbound capture would refuse the plaintext: either
    way the app is not reached, and the node proxy logs the attempt."""
    vault = mesh.runtime.get_pod("sec", "vault")
    neighbor = mesh.runtime.get_pod("sec", "neighbor")
    ll = link_local(vault)
    since = len(mesh.access_records("node-1"))
    done = curl(mesh, neighbor, f"http://[{ll}%25eth0]:8080/")
    assert "hello from" not in done.stdout and done.returncode != 0, done
    wait_for("the node proxy logs the attempt", lambda: [
        r for r in mesh.access_records("node-1")[since:]
        if ll in r["destination_address"] and r["outcome"] != "ok"])

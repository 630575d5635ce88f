"""Certificate rotation under steady load: the controller issues workload certificates
that live `ttl` seconds (`--cert-ttl`), node agents and the waypoint renew them at
half-life, and not one request fails — through L4 HBONE across nodes and through the
waypoint. CI: 10 s certificates (a rotation every ~5 s) for 25 s; AMBIENT_SOAK=1:
20 s certificates (every ~10 s) for 120 s."""

from __future__ import annotations

import secrets
import time
from collections import defaultdict

import pytest

from tests.reliability.harness import Load, pick, reliability_mesh, wait_serving
from tests.reliability.test_faults import NS, TOPOLOGY

pytestmark = [pytest.mark.netns, pytest.mark.e2e]


def test_rotation_every_half_ttl_loses_no_request() -> None:
    ttl = pick(10, 20)
    duration = pick(25, 120)
    with reliability_mesh("amq" + secrets.token_hex(2),
                          controller_args=["--cert-ttl", str(ttl)]) as mesh:
        mesh.apply(TOPOLOGY)
        client = mesh.pod(NS, "client", enrolled=True)
        for name in ("server-1", "server-2", "web-1", "web-2", "web-3"):
            mesh.pod(NS, name, enrolled=True)
        mesh.pod(NS, "waypoint")
        wait_serving(mesh, client, f"http://server.{NS}/")
        wait_serving(mesh, client, f"http://web.{NS}/", timeout=60)
        l4 = Load(mesh, client, "rotation-l4", f"http://server.{NS}/", duration=duration)
        l7 = Load(mesh, client, "rotation-l7", f"http://web.{NS}/", duration=duration)
        serials: dict[str, set[str]] = defaultdict(set)
        try:
            while l4.proc.poll() is None or l7.proc.poll() is None:
                for record in mesh.admin("GET", "/v1/status")["certificates"]["issued"]:
                    serials[record["identity"]].add(record["serial"])
                time.sleep(0.5)
            reports = [l4.report(), l7.report()]
        finally:
            l4.stop()
            l7.stop()
    counts = {k.rsplit("/", 1)[-1]: len(v) for k, v in sorted(serials.items())}
    print(f"certificate ttl {ttl} s, {duration} s of load; distinct certificates seen per "
          f"service account: {counts}")
    for r in reports:
        print(r.summary())
    expected = int(duration / (ttl / 2)) - 1
    for sa in ("client", "server", "web", "waypoint"):
        assert counts.get(sa, 0) >= expected, f"{sa} renewed {counts.get(sa)} < {expected}"
    for r in reports:
        assert r.total >= 0.8 * 40 * duration, r.summary()
        assert not r.failed, f"{r.summary()}\nfirst failures: {r.failed[:5]}"

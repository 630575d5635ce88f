from __future__ import annotations

import itertools

import pytest

from mesh.api import config_pb2 as pb
from nodeagent.balance import EndpointPicker, backends_for
from nodeagent.errors import SnapshotRejected
from nodeagent.state import ProxyState, normalize_ip


def snapshot() -> pb.Snapshot:
    eps = [pb.Endpoint(workload_uid=f"u{i}", addresses=[f"10.100.{i}.2", f"fd00:100:{i}::2"],
                       ports=[pb.EndpointPort(service_port=80, target_port=8080)])
           for i in (1, 2)]
    return pb.Snapshot(
        version="7",
        workloads=[pb.Workload(uid="u1", namespace="demo", name="a",
                               addresses=["10.100.1.2", "fd00:100:1::2"], enrolled=True)],
        services=[pb.Service(namespace="demo", name="b", vips=["10.96.0.10"],
                             ports=[pb.ServicePort(port=80, target_port=8080)], endpoints=eps)],
        authorizations=[pb.Authorization(namespace="demo", name="p", action=pb.DENY)],
        workload_policies=[pb.WorkloadPolicy(workload_uid="u1", mtls_mode=pb.STRICT,
                                             authorizations=["demo/p"])],
    )


def test_lookups_by_address_vip_and_policy() -> None:
    state = ProxyState.from_snapshot(snapshot())
    wl = state.workload_at("::ffff:10.100.1.2")
    assert wl is not None and wl.name == "a"
    assert state.workload_at("fd00:100:1::2") is wl
    target = state.service_at("10.96.0.10", 80)
    assert target is not None and target.key == "demo/b"
    assert state.service_at("10.96.0.10", 81) is None
    assert state.mtls_mode(wl) == pb.STRICT
    assert [a.name for a in state.authorizations_for(wl)] == ["p"]


def test_dangling_policy_reference_is_rejected() -> None:
    snap = snapshot()
    snap.workload_policies[0].authorizations.append("demo/missing")
    with pytest.raises(SnapshotRejected, match="demo/missing"):
        ProxyState.from_snapshot(snap)


def test_bad_address_is_rejected() -> None:
    snap = snapshot()
    snap.workloads[0].addresses.append("not-an-ip")
    with pytest.raises(SnapshotRejected, match="not-an-ip"):
        ProxyState.from_snapshot(snap)


def test_normalize_ip() -> None:
    assert normalize_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert normalize_ip("FD00::1") == "fd00::1"


def test_round_robin_and_failed_endpoints_are_tried_last() -> None:
    state = ProxyState.from_snapshot(snapshot())
    target = state.service_at("10.96.0.10", 80)
    assert target is not None
    backends = backends_for(target.service, target.port, prefer_v6=False)
    assert [(b.address, b.port) for b in backends] == [("10.100.1.2", 8080), ("10.100.2.2", 8080)]
    picker = EndpointPicker(cooldown=5)
    firsts = [picker.candidates("demo/b", backends, now=0)[0].address for _ in range(4)]
    assert firsts == ["10.100.1.2", "10.100.2.2"] * 2
    picker.report_failure(backends[0].key, now=10)
    for _ in range(3):
        assert picker.candidates("demo/b", backends, now=11)[0].address == "10.100.2.2"
    assert len(picker.candidates("demo/b", backends, now=11)) == 2
    counts = itertools.islice((picker.candidates("demo/b", backends, now=16)[0].address
                               for _ in range(2)), 2)
    assert set(counts) == {"10.100.1.2", "10.100.2.2"}
    v6 = backends_for(target.service, target.port, prefer_v6=True)
    assert v6[0].address == "fd00:100:1::2"

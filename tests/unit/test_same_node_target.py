"""Which outbound connections may skip the tunnel (nodeagent.proxy.same_node.target):
only HBONE straight to a pod this proxy serves; never a hop via a waypoint, even when
the waypoint (or the pod behind it) is on this node."""

from __future__ import annotations

from nodeagent.outbound_plan import Hop, Transport
from nodeagent.proxy.pod_listeners import PodEndpoint
from nodeagent.proxy.same_node import LocalPods, enabled_from_environment, target

LOCAL = PodEndpoint("demo", "sink", "uid-1", "/run/netns/x", "10.0.0.5", "fd00::5",
                    "spiffe://cluster.local/ns/demo/sa/sink")


def hop(transport: Transport, address: str, via_waypoint: bool = False) -> Hop:
    return Hop(transport, address, 15008, f"{address}:9000", None, None,
               via_waypoint=via_waypoint, target_port=9000)


def local() -> LocalPods:
    pods = LocalPods()
    pods.add(LOCAL)
    return pods


def test_hbone_to_a_local_pod_takes_the_fast_path_both_families() -> None:
    assert target(True, local(), [hop(Transport.HBONE, "10.0.0.5")]) is LOCAL
    assert target(True, local(), [hop(Transport.HBONE, "fd00::5")]) is LOCAL


def test_a_hop_via_a_waypoint_never_does_even_to_a_local_address() -> None:
    assert target(True, local(), [hop(Transport.HBONE, "10.0.0.5", via_waypoint=True)]) is None


def test_plaintext_passthrough_remote_and_switched_off_never_do() -> None:
    assert target(True, local(), [hop(Transport.PLAINTEXT, "10.0.0.5")]) is None
    assert target(True, local(), [hop(Transport.PASSTHROUGH, "10.0.0.5")]) is None
    assert target(True, local(), [hop(Transport.HBONE, "10.0.0.6")]) is None
    assert target(True, local(), []) is None
    assert target(False, local(), [hop(Transport.HBONE, "10.0.0.5")]) is None


def test_a_pod_that_left_is_no_longer_local() -> None:
    pods = local()
    pods.remove_key("demo/sink")
    assert target(True, pods, [hop(Transport.HBONE, "10.0.0.5")]) is None


def test_the_switch_reads_the_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("AMBIENT_SAME_NODE_FAST_PATH", raising=False)
    assert enabled_from_environment()
    for off in ("off", "0", "false", "no", "OFF"):
        monkeypatch.setenv("AMBIENT_SAME_NODE_FAST_PATH", off)
        assert not enabled_from_environment()

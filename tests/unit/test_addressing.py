import ipaddress

from mesh.runtime.addressing import NodeAddressing


def test_nodes_get_disjoint_pod_ranges() -> None:
    a, b = NodeAddressing(1), NodeAddressing(2)
    assert not a.pod_cidr.overlaps(b.pod_cidr)
    assert not a.pod_cidr6.overlaps(b.pod_cidr6)
    assert a.gateway == ipaddress.IPv4Address("10.100.1.1")


def test_pod_addresses_share_host_part_and_stay_in_range() -> None:
    plan = NodeAddressing(12)
    v4, v6 = plan.pod_address(7)
    assert v4 in plan.pod_cidr and v6 in plan.pod_cidr6
    assert str(v4).endswith(".7") and str(v6).endswith("::7")
    assert plan.node_side[0] != plan.fabric_side[0]

"""L4 authorization at the node proxy: the snapshot's policies are compiled once when
it is applied (nodeagent.state) and `nodeagent.authz.authorize` is what both inbound
handlers call. The semantics themselves are tested in test_authz_engine.py."""

from __future__ import annotations

import asyncio
import io

import pytest

from mesh.api import config_pb2 as pb
from mesh.authz import Policy
from nodeagent.accesslog import AccessLog
from nodeagent.authz import authorize
from nodeagent.metrics import ProxyMetrics
from nodeagent.proxy.handlers import ProxyContext
from nodeagent.proxy.tunnel import Tunnels
from nodeagent.state import ProxyState
from tests.unit.test_nodeagent_admission import Certs, _run

ALICE = "spiffe://cluster.local/ns/frontend/sa/alice"
INVENTORY = pb.Workload(uid="inv", namespace="demo", name="inventory-0",
                        addresses=["10.100.2.3"], enrolled=True)


def state(*policies: pb.Authorization) -> ProxyState:
    snap = pb.Snapshot(version="9", workloads=[INVENTORY], authorizations=list(policies))
    snap.workload_policies.append(pb.WorkloadPolicy(
        workload_uid="inv", authorizations=[f"{p.namespace}/{p.name}" for p in policies]))
    return ProxyState.from_snapshot(snap)


def test_policies_are_compiled_when_the_snapshot_is_applied() -> None:
    s = state(pb.Authorization(namespace="demo", name="p", action=pb.ALLOW, rules=[
        pb.Rule(operations=[pb.Operation(ports=[9000], methods=["get"])])]))
    (p,) = s.authorizations_for(INVENTORY)
    assert isinstance(p, Policy) and p.key == "demo/p"
    assert p.rules[0].operations[0].methods == ("GET",)


def test_bad_cidr_in_a_deny_denies_instead_of_being_skipped() -> None:
    """The former L4 engine skipped a CIDR it could not parse at each connection: a
    DENY on `10.1.0.0/16x` let 10.1.2.3 in."""
    s = state(pb.Authorization(namespace="demo", name="deny-lab", action=pb.DENY, rules=[
        pb.Rule(sources=[pb.Source(ip_blocks=["10.1.0.0/16x"])])]))
    for principal, ip in ((None, "10.1.2.3"), (ALICE, "192.0.2.1")):
        v = authorize(s, INVENTORY, principal, ip, 9000)
        assert not v.allowed and v.policy == "demo/deny-lab"
        assert "spec.rules[0].from[0].source.ipBlocks[0]" in v.reason


def test_bad_cidr_in_an_allow_not_form_is_not_a_wider_allow() -> None:
    s = state(pb.Authorization(namespace="demo", name="allow-not-lab", action=pb.ALLOW,
                               rules=[pb.Rule(sources=[pb.Source(not_ip_blocks=["10.1.0.0/33"])])]))
    assert not authorize(s, INVENTORY, None, "10.1.2.3", 9000).allowed


def test_allowed_and_denied_name_the_policy() -> None:
    s = state(pb.Authorization(namespace="demo", name="frontend-only", action=pb.ALLOW, rules=[
        pb.Rule(sources=[pb.Source(namespaces=["frontend"])])]))
    ok = authorize(s, INVENTORY, ALICE, "10.100.1.3", 9000)
    assert ok.allowed and ok.policy == "demo/frontend-only"
    no = authorize(s, INVENTORY, None, "10.100.1.3", 9000)
    assert not no.allowed and no.policy == "demo/frontend-only"


def test_unknown_workload_is_denied() -> None:
    v = authorize(state(), None, ALICE, "10.100.1.3", 9000)
    assert not v.allowed and "not in the config in force (version '9')" in v.reason


def test_no_policy_allows() -> None:
    assert authorize(state(), INVENTORY, None, "10.100.1.3", 9000).allowed


def lab_deny(*blocks: str) -> pb.Authorization:
    return pb.Authorization(namespace="demo", name="deny-lab", action=pb.DENY,
                            rules=[pb.Rule(sources=[pb.Source(ip_blocks=list(blocks))])])


@pytest.mark.parametrize(("blocks", "denied"), [
    (["10.1.0.0/16", "10.2.0.0/16x"], True),  # cannot be compiled: deny-all
    (["10.1.0.0/16", "10.2.0.0/16"], False),  # the caller (127.0.0.1) is not in it
])
def test_inbound_handler_enforces_the_deny_all_on_real_sockets(blocks: list[str],
                                                                denied: bool) -> None:
    """handle_inbound_plaintext on loopback (test_nodeagent_admission's harness): the
    connection is reset, never reaches the app, and the access log names the policy."""
    snap = pb.Snapshot(version="v7", workloads=[pb.Workload(
        uid="uid-web", namespace="demo", name="web-0", addresses=["127.0.0.2"], enrolled=True)],
        authorizations=[lab_deny(*blocks)])
    snap.workload_policies.append(pb.WorkloadPolicy(
        workload_uid="uid-web", mtls_mode=pb.PERMISSIVE, authorizations=["demo/deny-lab"]))
    record, reached, got = asyncio.run(
        _run("inbound_plaintext", ProxyState.from_snapshot(snap), Certs()))
    if denied:
        assert (reached, got) == (0, b"<reset>")
        assert record["outcome"] == "denied" and record["policy"] == "demo/deny-lab"
        assert "could not be compiled" in record["reason"]
    else:  # past authorization, on to the app (which the harness does not run)
        assert record["outcome"] == "error" and "Connect call failed" in record["reason"]
        assert record["policy"] == ""


def test_uncompilable_policies_in_force_are_in_the_proxy_metrics() -> None:
    ctx = ProxyContext(state(lab_deny("10.2.0.0/16x"), pb.Authorization(
        namespace="demo", name="fine", action=pb.ALLOW, rules=[pb.Rule()])),
        ProxyMetrics(), AccessLog(io.StringIO()), Tunnels(Certs()),
        lambda s: ("127.0.0.1", 1))
    sample = "ambient_authz_uncompilable_policies"
    assert ctx.metrics.registry.get_sample_value(sample, {"policy": "demo/deny-lab"}) == 1
    assert ctx.metrics.registry.get_sample_value(sample, {"policy": "demo/fine"}) is None
    ctx.state = state(lab_deny("10.2.0.0/16"))  # the fixed push
    assert ctx.metrics.registry.get_sample_value(sample, {"policy": "demo/deny-lab"}) is None

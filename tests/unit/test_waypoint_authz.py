"""L7 authorization at the waypoint, through the waypoint's real code: the snapshot is
built by waypoint.config.build (policies compiled once, scoped to the services they
target) and requests go through the pipeline's own stages (normalize, resolve the
service, authorize, route). `waypoint_decision` is also the "real proxy" of the
explain property test. The semantics themselves are in test_authz_engine.py."""

from __future__ import annotations

import asyncio
from functools import partial
from types import SimpleNamespace

import pytest

from mesh.api import config_pb2 as pb
from waypoint.authz import AuthzPolicy, AuthzRule, OperationCondition, RequestFacts, evaluate
from waypoint.config import WaypointConfig, build
from waypoint.http1 import DownstreamInfo
from waypoint.messages import EmptyBody, ReplayableBody, RequestHead, Response, local_response
from waypoint.pipeline import Exchange, authorize, normalize, resolve_service, route
from waypoint.server import WaypointServer
from waypoint.state import WaypointState

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"


def waypoint_decision(cfg: WaypointConfig, principal: str | None, method: str, target: str,
                      host: str, destination: str, peer: str) -> tuple[int, str]:
    """(status, reason) of the waypoint's pipeline up to the backend choice: 200 when
    the request would be forwarded, else the waypoint's own 400/403/404/500."""
    rt = SimpleNamespace(state=WaypointState(cfg))

    async def forwarded(ex: Exchange) -> Response:
        return local_response(200, "forwarded")

    chain = forwarded
    for stage in (route, authorize, resolve_service, normalize):
        chain = partial(stage, rt, next=chain)  # type: ignore[arg-type]
    ex = Exchange(RequestHead(method, target, host, []), ReplayableBody(EmptyBody(), empty=True),
                  DownstreamInfo(principal, destination, peer), 0.0)
    resp = asyncio.run(chain(ex))
    return resp.status, ex.reason


def service(name: str, vip: str) -> pb.Service:
    return pb.Service(namespace="default", name=name, vips=[vip],
                      ports=[pb.ServicePort(name="http", port=80, target_port=8080)],
                      endpoints=[pb.Endpoint(workload_uid="u1", addresses=["10.0.0.5"])])


def snapshot(*policies: pb.Authorization) -> pb.Snapshot:
    return pb.Snapshot(
        version="1", kind=pb.WAYPOINT, trust_domain="cluster.local",
        waypoint=pb.WaypointInfo(namespace="default", name="wp",
                                 services=["default/web", "default/api"]),
        services=[service("web", "10.96.0.1"), service("api", "10.96.0.2")],
        authorizations=list(policies))


def call(cfg: WaypointConfig, vip: str, method: str = "GET", path: str = "/",
         principal: str | None = SLEEP) -> tuple[int, str]:
    return waypoint_decision(cfg, principal, method, path, "x", f"{vip}:80", "10.100.1.3:4000")


WEB, API = "10.96.0.1", "10.96.0.2"
GATEWAY = pb.PolicyTarget(kind="Gateway", name="wp")
WEB_TARGET = pb.PolicyTarget(kind="Service", namespace="default", name="web")


def test_deny_is_a_403_naming_the_policy() -> None:
    cfg = build(snapshot(pb.Authorization(
        namespace="default", name="no-delete", action=pb.DENY, targets=[GATEWAY],
        rules=[pb.Rule(operations=[pb.Operation(methods=["delete"])])])))
    assert call(cfg, WEB, "DELETE") == (403, "RBAC: access denied by DENY policy "
                                             "default/no-delete")
    assert call(cfg, WEB, "GET")[0] == 200


@pytest.mark.parametrize(("targets", "api_status"), [
    # A Gateway target applies the policy to every service of the waypoint, even when
    # the policy also names a Service (build used to apply it to that service only).
    ([WEB_TARGET, GATEWAY], 403),
    ([WEB_TARGET], 200),
])
def test_targets_pick_the_services(targets: list[pb.PolicyTarget], api_status: int) -> None:
    cfg = build(snapshot(pb.Authorization(
        namespace="default", name="no-delete", action=pb.DENY, targets=targets,
        rules=[pb.Rule(operations=[pb.Operation(methods=["DELETE"])])])))
    assert call(cfg, WEB, "DELETE")[0] == 403
    assert call(cfg, API, "DELETE")[0] == api_status


def test_uncompilable_policy_denies_its_services_and_the_snapshot_is_kept() -> None:
    cfg = build(snapshot(pb.Authorization(
        namespace="default", name="lab", action=pb.DENY, targets=[WEB_TARGET],
        rules=[pb.Rule(sources=[pb.Source(ip_blocks=["10.100.1.0/24", "10.1.0.0/16x"])])])))
    status, reason = call(cfg, WEB)
    assert status == 403 and "default/lab could not be compiled" in reason
    assert call(cfg, API)[0] == 200


def test_allow_list_at_l7_and_plaintext_callers() -> None:
    cfg = build(snapshot(pb.Authorization(
        namespace="default", name="sleep-only", action=pb.ALLOW, targets=[GATEWAY],
        rules=[pb.Rule(sources=[pb.Source(principals=["cluster.local/ns/default/sa/sleep"])],
                       operations=[pb.Operation(paths=["/api/*"])])])))
    assert call(cfg, WEB, path="/api/x")[0] == 200
    assert call(cfg, WEB, path="/api/../admin")[0] == 403, "normalized before the policy"
    assert call(cfg, WEB, path="/api/x", principal=None)[0] == 403
    assert call(cfg, WEB, path="/api/x",
                principal="spiffe://cluster.local/ns/other/sa/sleep")[0] == 403


def test_hand_built_policies_for_tests() -> None:
    """The constructors kept in waypoint.authz build compiled policies by hand."""
    deny = AuthzPolicy("default/deny-admin", "DENY", (
        AuthzRule(operations=(OperationCondition(paths=("/admin*",), methods=("POST",)),)),))
    assert deny.key == "default/deny-admin"
    assert not evaluate([deny], RequestFacts(SLEEP, "POST", "/admin/x", "web"))
    assert evaluate([deny], RequestFacts(SLEEP, "GET", "/admin/x", "web"))


def test_uncompilable_policies_in_force_are_in_the_waypoint_metrics() -> None:
    bad = pb.Authorization(namespace="default", name="bad-port", action=pb.DENY,
                           rules=[pb.Rule(operations=[pb.Operation(ports=[0])])])
    server = WaypointServer(WaypointState(build(snapshot(bad))))
    line = 'ambient_authz_uncompilable_policies{policy="default/bad-port"} 1.0'
    assert line in server.metrics.exposition().decode()
    server.state.update(build(snapshot()))  # the fixed push
    assert line not in server.metrics.exposition().decode()

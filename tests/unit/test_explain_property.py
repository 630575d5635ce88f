"""Property: what `ambientctl explain` says IS what the proxies decide.

For generated AuthorizationPolicies (any action, Gateway- and Service-targeted, methods
in mixed case, wildcards, CIDRs good and bad, empty sources/operations that cannot be
compiled) and generated requests, explain's verdict equals the decision of
  - L7: the waypoint's real code: waypoint.config.build on the WAYPOINT snapshot, then
    the pipeline's normalize -> resolve_service -> authorize -> route stages;
  - L4: the node proxy's: ProxyState.from_snapshot on the destination's NODE
    snapshot, the STRICT check of handle_inbound_plaintext, then
    nodeagent.authz.authorize, as both inbound handlers call it.
Issue 19: explain re-implemented the waypoint's config building and drifted (no
Gateway-targeted policies, methods not upper-cased)."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mesh.api import config_pb2 as pb
from nodeagent.authz import authorize
from nodeagent.state import ProxyState
from tests.unit.test_ambientctl_explain import WORKLOADS, explain, snapshots
from tests.unit.test_waypoint_authz import waypoint_decision
from waypoint.config import build

PRINCIPALS = ["cluster.local/ns/demo/sa/frontend", "spiffe://cluster.local/ns/demo/sa/frontend",
              "*", "cluster.local/ns/demo/*", "*/sa/inventory", "cluster.local/ns/other/sa/x"]
NAMESPACES = ["demo", "legacy", "other", "*", "dem*"]
BLOCKS = ["10.100.1.0/24", "10.100.2.4", "10.0.0.0/8", "fd00::/8", "10.1.0.0/16x"]
METHODS = ["get", "GET", "Post", "POST", "delete", "DELETE", "pUt"]
PATHS = ["/items", "/items/*", "/admin", "/admin/*", "*.css", "/", "*"]
HOSTS = ["catalog.demo", "Catalog.Demo", "*.demo", "*", "other.example"]
PORTS = [80, 8080, 9000, 9001]


def _some(values: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(values), max_size=2)


SOURCES = st.builds(pb.Source, principals=_some(PRINCIPALS), not_principals=_some(PRINCIPALS),
                    namespaces=_some(NAMESPACES), not_namespaces=_some(NAMESPACES),
                    ip_blocks=_some(BLOCKS), not_ip_blocks=_some(BLOCKS))
PORT_LISTS = st.lists(st.sampled_from(PORTS), max_size=2)
OPERATIONS = st.builds(pb.Operation, ports=PORT_LISTS, not_ports=PORT_LISTS,
                       methods=_some(METHODS), not_methods=_some(METHODS),
                       paths=_some(PATHS), not_paths=_some(PATHS),
                       hosts=_some(HOSTS), not_hosts=_some(HOSTS))
RULES = st.builds(pb.Rule, sources=st.lists(SOURCES, max_size=2),
                  operations=st.lists(OPERATIONS, max_size=2))
GATEWAY = pb.PolicyTarget(kind="Gateway", namespace="demo", name="waypoint")
TARGETS = st.sampled_from([
    [], [GATEWAY], [pb.PolicyTarget(kind="Gateway", name="waypoint")],
    [pb.PolicyTarget(kind="Gateway", namespace="other", name="waypoint")],
    [pb.PolicyTarget(kind="Service", namespace="demo", name="catalog")],
    [pb.PolicyTarget(kind="Service", name="catalog-v1")],
    [pb.PolicyTarget(kind="Service", namespace="demo", name="catalog"), GATEWAY],
])
ACTIONS = st.sampled_from([pb.ALLOW, pb.DENY, pb.ALLOW, pb.DENY, 0])
POLICIES = st.lists(st.tuples(ACTIONS, st.lists(RULES, max_size=3), TARGETS), max_size=4)


def authorizations(drawn: list[tuple[int, list[pb.Rule], list[pb.PolicyTarget]]]
                   ) -> list[pb.Authorization]:
    return [pb.Authorization(namespace="demo", name=f"p{i}", action=action,  # type: ignore[arg-type]
                             rules=rules, targets=targets)
            for i, (action, rules, targets) in enumerate(drawn)]


def _workload(ns: str, name: str) -> pb.Workload:
    return next(w for w in WORKLOADS if (w.namespace, w.name) == (ns, name))


WAYPOINT_CALLERS = [("demo", "frontend-0"), ("demo", "inventory-0")]
CATALOG_VIP = "10.96.0.10:80"  # what the node proxy puts in :authority (tests/unit/...explain)
FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


NO_DELETE = pb.Rule(operations=[pb.Operation(methods=["delete"])])
CATALOG = pb.PolicyTarget(kind="Service", namespace="demo", name="catalog")
FRONTEND_ONLY = pb.Rule(sources=[pb.Source(principals=["cluster.local/ns/demo/sa/frontend"])])


@FAST
# The drifts of issue 19, always among the cases: a Gateway-targeted policy, a
# lower-case method, a Gateway + Service target, a policy that cannot be compiled.
@example(drawn=[(pb.DENY, [NO_DELETE], [GATEWAY])], caller=WAYPOINT_CALLERS[0],
         method="DELETE", path="/items")
@example(drawn=[(pb.ALLOW, [FRONTEND_ONLY], [CATALOG, GATEWAY])], caller=WAYPOINT_CALLERS[1],
         method="GET", path="/items")
@example(drawn=[(pb.ALLOW, [pb.Rule(sources=[pb.Source(ip_blocks=["10.1.0.0/16x"])])],
                 [GATEWAY])], caller=WAYPOINT_CALLERS[0], method="GET", path="/items")
@given(drawn=POLICIES, caller=st.sampled_from(WAYPOINT_CALLERS),
       method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "delete"]),
       path=st.sampled_from(["/items", "/items/a", "/admin", "/admin/x", "/x.css",
                             "/items/../admin", "//admin", "/%61dmin", "/a%2Fb"]))
def test_l7_explain_equals_the_waypoint(drawn: list[tuple[int, list[pb.Rule],
                                                          list[pb.PolicyTarget]]],
                                        caller: tuple[str, str], method: str,
                                        path: str) -> None:
    snaps = snapshots()
    del snaps["demo/waypoint"].authorizations[:]
    snaps["demo/waypoint"].authorizations.extend(authorizations(drawn))
    src = _workload(*caller)
    e = explain("/".join(caller), f"catalog.demo:80{path}", method=method, snaps=snaps)

    status, reason = waypoint_decision(
        build(snaps["demo/waypoint"]), src.identity, method, path, "catalog.demo",
        CATALOG_VIP, f"{src.addresses[0]}:40000")

    assert e.allowed == (status == 200), (status, reason, e.as_dict()["verdict"])
    if status == 403:
        assert e.reason == reason
    l7 = [s for s in e.steps if s.stage == "L7 policy"]
    assert l7 and ("-> ALLOW" in l7[0].detail) == (status not in (400, 403))


PLAIN_OR_MTLS = [("legacy", "client"), ("demo", "frontend-0"), ("demo", "catalog-v1-0")]


@FAST
@example(drawn=[(pb.DENY, [pb.Rule(sources=[pb.Source(ip_blocks=["10.1.0.0/16x"])])], [])],
         caller=PLAIN_OR_MTLS[0], strict=False, via_service=False)
@example(drawn=[(pb.DENY, [pb.Rule(operations=[pb.Operation(ports=[9000], methods=["GET"])])],
                 [])], caller=PLAIN_OR_MTLS[1], strict=False, via_service=True)
@given(drawn=POLICIES, caller=st.sampled_from(PLAIN_OR_MTLS), strict=st.booleans(),
       via_service=st.booleans())
def test_l4_explain_equals_the_node_proxy(drawn: list[tuple[int, list[pb.Rule],
                                                            list[pb.PolicyTarget]]],
                                          caller: tuple[str, str], strict: bool,
                                          via_service: bool) -> None:
    snaps = snapshots(strict_inventory=strict)
    node = snaps["node-2"]
    del node.authorizations[:]
    node.authorizations.extend(authorizations(drawn))
    del node.workload_policies[0].authorizations[:]
    node.workload_policies[0].authorizations.extend(f"demo/p{i}" for i in range(len(drawn)))
    dst = "inventory.demo:9000" if via_service else "demo/inventory-0:9000"
    e = explain("/".join(caller), dst, snaps=snaps)

    src = _workload(*caller)
    state = ProxyState.from_snapshot(node)
    inventory = state.workloads_by_uid["inv"]
    principal = src.identity if src.enrolled else None
    if principal is None and state.mtls_mode(inventory) == pb.STRICT:
        allowed, decided = False, "PeerAuthentication demo/default"
    else:
        verdict = authorize(state, inventory, principal, src.addresses[0], 9000)
        allowed = verdict.allowed
        decided = f"AuthorizationPolicy {verdict.policy}" if verdict.policy else ""
        if not allowed:
            assert e.reason == verdict.reason
    assert e.allowed == allowed
    assert [b.get("allowed") for b in e.backends] == [allowed]
    if not allowed or decided.startswith("AuthorizationPolicy demo/p"):
        assert e.decided_by == decided

"""The L7 config fields end to end: YAML (HTTPRoute URLRewrite; TrafficPolicy
retry.allowNonIdempotent and outlierDetection.consecutiveGatewayErrors with
maxEjectionPercent) -> mesh/config validation -> the controller's registry and
SnapshotBuilder -> the WAYPOINT snapshot -> the real `ambient-waypoint` process
(--snapshot), in front of real aiohttp backends, driven by a real HTTP client.
Per-source rate limiting needs caller identities: test_waypoint_l7config_identity.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from aiohttp import web

from controller.registry import Registry
from controller.snapshots import SnapshotBuilder
from mesh.api import config_pb2 as pb
from mesh.config import parse_documents
from tests.e2e.waypoint_helpers import (
    Backend,
    BackendLoop,
    Waypoint,
    answer_name,
    echo,
    fail_every,
    host,
    run_waypoint,
    status_500,
)

pytestmark = pytest.mark.e2e

REWRITE_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: rewrite, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: rewrite, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /shop}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: catalog.internal
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /}
    backendRefs: [{name: rewrite, port: 80}]
  - matches: [{path: {type: Exact, value: /old}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /new/place}}
    backendRefs: [{name: rewrite, port: 80}]
  - backendRefs: [{name: rewrite, port: 80}]
"""

# Both services get the same Gateway API retry (POST included in nothing it says);
# only the TrafficPolicy of post-retried allows non-idempotent methods.
RETRY_ROUTES = "\n---\n".join(f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{group: "", kind: Service, name: {name}}}]
  rules:
  - backendRefs: [{{name: {name}, port: 80}}]
    retry: {{attempts: 2, codes: [503], backoff: 1ms}}
""" for name in ("post-retried", "post-once"))

POLICIES = """
apiVersion: ambientmesh.io/v1alpha1
kind: TrafficPolicy
metadata: {name: post-retried, namespace: default}
spec:
  targetRefs: [{kind: Service, name: post-retried}]
  retry: {allowNonIdempotent: true}
---
apiVersion: ambientmesh.io/v1alpha1
kind: TrafficPolicy
metadata: {name: gateway-errors, namespace: default}
spec:
  targetRefs: [{kind: Service, name: ejecting}]
  outlierDetection:
    consecutive5xxErrors: 0
    consecutiveGatewayErrors: 2
    interval: 1s
    baseEjectionTime: 60s
    maxEjectionPercent: 25
"""


def service_yaml(name: str, ports: list[int]) -> str:
    """A Service using the waypoint, with one EndpointSlice per loopback backend."""
    docs = [f"""
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
  labels: {{ambientmesh.io/use-waypoint: waypoint}}
spec:
  ports: [{{name: http, port: 80}}]
"""]
    for i, port in enumerate(ports):
        docs.append(f"""
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-{i}
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
endpoints: [{{addresses: ["127.0.0.1"]}}]
ports: [{{name: http, port: {port}}}]
""")
    return "\n---\n".join(docs)


def snapshot_from_yaml(text: str) -> pb.Snapshot:
    """What the controller pushes to waypoint default/waypoint for this config."""
    registry = Registry()
    registry.replace_config({d.key: d.resource for d in parse_documents(text, "l7.yaml")})
    return SnapshotBuilder(registry.view()).waypoint("default", "waypoint").message("n")


async def bad_gateway(b: Backend, request: web.Request) -> web.Response:
    return web.Response(status=502, text=b.name)


@dataclass
class Mesh:
    wp: Waypoint
    b: dict[str, Backend]
    snapshot: pb.Snapshot


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    loop = BackendLoop()
    try:
        b = {
            "echo": loop.add(Backend("echo"), echo),
            "post-retried": loop.add(Backend("post-retried"), fail_every(2)),
            "post-once": loop.add(Backend("post-once"), fail_every(2)),
            "good": loop.add(Backend("good"), answer_name),
            "gw1": loop.add(Backend("gw1"), bad_gateway),
            "gw2": loop.add(Backend("gw2"), bad_gateway),
            "err": loop.add(Backend("err"), status_500),
        }
        text = "\n---\n".join([
            """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: ambient-waypoint}
""",
            service_yaml("rewrite", [b["echo"].port]),
            service_yaml("post-retried", [b["post-retried"].port]),
            service_yaml("post-once", [b["post-once"].port]),
            service_yaml("ejecting", [b[k].port for k in ("good", "gw1", "gw2", "err")]),
            REWRITE_ROUTE, RETRY_ROUTES, POLICIES,
        ])
        snap = snapshot_from_yaml(text)
        with run_waypoint(snap, tmp_path_factory.mktemp("wp-l7")) as wp:
            yield Mesh(wp, b, snap)
    finally:
        loop.close()


def test_snapshot_carries_the_new_fields(mesh: Mesh) -> None:
    """Guards the premise of the tests below: the builder put every field in."""
    rules = {r.name: r.rules for r in mesh.snapshot.routes}
    assert rules["rewrite"][0].url_rewrite.prefix_match == "/"
    assert rules["rewrite"][0].url_rewrite.hostname == "catalog.internal"
    assert rules["rewrite"][1].url_rewrite.full_path == "/new/place"
    tps = {t.name: t for t in mesh.snapshot.traffic_policies}
    assert tps["post-retried"].retry.allow_non_idempotent
    od = tps["gateway-errors"].outlier_detection
    assert od.HasField("consecutive_5xx") and od.consecutive_5xx == 0
    assert (od.consecutive_gateway_errors, od.max_ejection_percent) == (2, 25)


def test_url_rewrite_prefix_full_path_and_hostname(mesh: Mesh) -> None:
    with httpx.Client(base_url=mesh.wp.url, timeout=10,
                      headers={"host": host("rewrite")}) as client:
        shop = client.get("/shop/items/7?color=red").json()
        bare = client.get("/shop").json()
        old = client.get("/old?q=1").json()
        plain = client.get("/plain/path?z=2").json()
    assert shop["path"] == "/items/7?color=red"
    assert shop["headers"]["host"] == "catalog.internal"
    assert bare["path"] == "/" and bare["headers"]["host"] == "catalog.internal"
    assert old["path"] == "/new/place?q=1"
    assert old["headers"]["host"] == host("rewrite")  # no hostname in that rewrite
    assert plain["path"] == "/plain/path?z=2"  # the rule without a filter
    # The access log keeps what the client asked for.
    paths = {str(r["path"]) for r in mesh.wp.access_records()}
    assert {"/shop/items/7", "/shop", "/old"} <= paths
    assert not {"/items/7", "/new/place"} & paths


def _post_statuses(url: str, svc: str, n: int) -> Counter[int]:
    with httpx.Client(base_url=url, timeout=10, headers={"host": host(svc)}) as client:
        return Counter(client.post("/orders", content=b'{"item": 1}').status_code
                       for _ in range(n))


def test_post_is_retried_only_where_the_policy_allows_it(mesh: Mesh) -> None:
    # The backends fail every second request with 503; one client in sequence.
    before = sum(mesh.b["post-retried"].hits.values())
    assert _post_statuses(mesh.wp.url, "post-retried", 20) == {200: 20}
    # Backend calls 1, 2+3, 4+5, ...: the 19 failed first tries were retried.
    assert sum(mesh.b["post-retried"].hits.values()) - before == 39
    before = sum(mesh.b["post-once"].hits.values())
    assert _post_statuses(mesh.wp.url, "post-once", 20) == {200: 10, 503: 10}
    assert sum(mesh.b["post-once"].hits.values()) - before == 20  # never retried
    # The same route retries an idempotent method without any policy.
    with httpx.Client(base_url=mesh.wp.url, timeout=10,
                      headers={"host": host("post-once")}) as client:
        assert Counter(client.get("/").status_code for _ in range(20)) == {200: 20}


def test_gateway_errors_eject_within_max_ejection_percent(mesh: Mesh) -> None:
    with httpx.Client(base_url=mesh.wp.url, timeout=10,
                      headers={"host": host("ejecting")}) as client:
        # Warm-up: each endpoint is visited 5 times, round robin.
        for _ in range(20):
            client.get("/")
        seen = Counter(client.get("/").text for _ in range(90))
    # One endpoint of four may be out (25 %): whichever gateway-erroring endpoint
    # reached 2 in a row first; the other stays in, as does the one failing with 500
    # (5xx ejection is off) and the healthy one.
    out = {"gw1", "gw2"} - set(seen)
    assert len(out) == 1, seen
    assert set(seen) == {"good", "err"} | ({"gw1", "gw2"} - out), seen
    assert 25 <= seen["good"] <= 35 and 25 <= seen["err"] <= 35, seen
    assert "ambient_waypoint" in mesh.wp.metrics()

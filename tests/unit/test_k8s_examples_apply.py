"""Issue 15 item 5: every example applies to an API server. Each document of
examples/ is POSTed through real HTTP to the fake API server (our CRDs' schemas, the
real server's `Required value` for a container without an image), and the HTTPRoute
examples keep to the Gateway API channel their header names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.fakes.kube_apiserver import BY_KIND, FakeApiServer
from tests.fakes.kubectl import kubectl, kubectl_path, tls_context

pytestmark = pytest.mark.anyio
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# HTTPRoute rule fields of the standard channel of Gateway API v1.2 (retry, name and
# sessionPersistence are experimental there; timeouts is standard since v1.2).
STANDARD_RULE_FIELDS = {"matches", "filters", "backendRefs", "timeouts"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [(str(f.relative_to(EXAMPLES)), d)
            for f in sorted(EXAMPLES.rglob("*.yaml")) for d in yaml.safe_load_all(f.read_text())
            if d]


def _path(doc: dict[str, Any]) -> str:
    rtype = BY_KIND[doc["kind"]]
    base = f"/api/{rtype.version}" if not rtype.group else \
        f"/apis/{rtype.group}/{rtype.version}"
    ns = doc["metadata"].get("namespace", "default")
    return f"{base}/namespaces/{ns}/{rtype.plural}" if rtype.namespaced else \
        f"{base}/{rtype.plural}"


async def test_every_example_is_created_by_the_api_server() -> None:
    server = FakeApiServer()
    await server.start()
    refused = []
    try:
        async with aiohttp.ClientSession(headers={
                "Authorization": f"Bearer {server.token}"}) as http:
            for name, doc in documents():
                if doc["kind"] == "HTTPRoute" and server.get(
                        "HTTPRoute", doc["metadata"]["namespace"], doc["metadata"]["name"]):
                    continue  # the standard-channel variant of the same route
                async with http.post(server.url + _path(doc),
                                     params={"fieldValidation": "Strict"}, json=doc) as r:
                    if r.status != 201:
                        refused.append((name, doc["kind"], r.status, await r.text()))
    finally:
        await server.stop()
    assert refused == []


def test_a_container_without_an_image_is_refused_as_the_real_server_does() -> None:
    from tests.fakes.ssa import missing_images
    (dep,) = [d for n, d in documents() if d["kind"] == "Deployment"]
    dep["spec"]["template"]["spec"]["containers"][0].pop("image")
    assert missing_images(dep, "Deployment") == ["spec.template.spec.containers[0].image"]


def test_http_routes_keep_to_the_channel_they_name() -> None:
    routes = {n: d for n, d in documents() if d["kind"] == "HTTPRoute"}
    assert set(routes) == {"httproute.yaml", "standard-channel/httproute.yaml"}
    standard = routes["standard-channel/httproute.yaml"]
    for rule in standard["spec"]["rules"]:
        assert set(rule) <= STANDARD_RULE_FIELDS, set(rule) - STANDARD_RULE_FIELDS
    assert "STANDARD channel" in (EXAMPLES / "standard-channel/httproute.yaml").read_text()
    experimental = routes["httproute.yaml"]
    assert any("retry" in r for r in experimental["spec"]["rules"])
    assert "EXPERIMENTAL channel" in (EXAMPLES / "httproute.yaml").read_text()
    # The same route otherwise: dropping retry is the only difference.
    stripped = [{k: v for k, v in r.items() if k != "retry"}
                for r in experimental["spec"]["rules"]]
    assert stripped == standard["spec"]["rules"]


@pytest.mark.skipif(kubectl_path() is None, reason="needs kubectl")
async def test_kubectl_server_side_apply_of_the_examples(tmp_path: Path) -> None:
    """`kubectl apply --server-side -f examples/` (the real kubectl, HTTPS to the fake),
    then the standard-channel route over it: the same manager no longer applies
    `retry`, so the server removes it (what a user switching channels sees)."""
    server = FakeApiServer()
    await server.start(tls_context(tmp_path))
    try:
        out = await kubectl(server, tmp_path, "apply", "--server-side", "--validate=false",
                            "-f", str(EXAMPLES))
        assert out.count("serverside-applied") == len(
            [d for f in EXAMPLES.glob("*.yaml") for d in yaml.safe_load_all(f.read_text())
             if d])
        dep = server.get("Deployment", "demo", "catalog")
        assert dep is not None
        assert dep["spec"]["template"]["spec"]["containers"][0]["image"]
        route = server.get("HTTPRoute", "demo", "catalog")
        assert route is not None and "retry" in route["spec"]["rules"][1]
        await kubectl(server, tmp_path, "apply", "--server-side", "--validate=false",
                      "-f", str(EXAMPLES / "standard-channel"))
        route = server.get("HTTPRoute", "demo", "catalog")
        assert route is not None and "retry" not in route["spec"]["rules"][1]
        assert route["spec"]["rules"][1]["timeouts"] == {"request": "2s"}
    finally:
        await server.stop()

"""Issue 15 item 2: Gateway API status written as implementations do, read back the way
`kubectl get gatewayclass,gateway,httproute` prints it (the Gateway API CRDs' printer
columns), against the fake API server with the real client."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from controller.kube.gateway_status import CONTROLLER_NAME
from tests.e2e.test_k8s_controller import WAYPOINT_GATEWAY, kube_controller, populate, until
from tests.e2e.test_k8s_controller import server as server  # fixture
from tests.fakes.kube_apiserver import FakeApiServer
from tests.fakes.kubectl import kubectl, kubectl_path, tls_context

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def cond(obj: dict[str, Any] | None, type_: str, conditions: list[Any] | None = None
         ) -> dict[str, Any]:
    """`.status.conditions[?(@.type==<type_>)]` (what the printer columns read)."""
    conds = conditions if conditions is not None else \
        ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conds if c.get("type") == type_), {})


def get_gateway_row(gw: dict[str, Any] | None) -> tuple[str, str, str]:
    """CLASS, ADDRESS, PROGRAMMED of `kubectl get gateway` (standard-install.yaml's
    additionalPrinterColumns: .spec.gatewayClassName, .status.addresses[*].value,
    .status.conditions[?(@.type=="Programmed")].status)."""
    gw = gw or {}
    addresses = ",".join(a["value"] for a in (gw.get("status") or {}).get("addresses") or [])
    return (gw["spec"]["gatewayClassName"], addresses,
            cond(gw, "Programmed").get("status", "Unknown"))


def route(name: str, header: str = "x-user") -> dict[str, Any]:
    return {"kind": "HTTPRoute", "apiVersion": "gateway.networking.k8s.io/v1",
            "metadata": {"name": name, "namespace": "demo"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                     "rules": [{"matches": [{"headers": [{"name": header, "value": "a"}]}],
                                "backendRefs": [{"name": "web", "port": 80}]}]}}


async def test_gatewayclass_gateway_and_routes_get_status(
        tmp_path: Path, server: FakeApiServer) -> None:
    async with kube_controller(server, tmp_path / "c"):
        # GatewayClass: made by the controller, Accepted.
        await until(lambda: cond(server.get("GatewayClass", "", "ambient-waypoint"),
                                 "Accepted").get("status") == "True")
        gc = server.get("GatewayClass", "", "ambient-waypoint")
        assert gc is not None and gc["spec"]["controllerName"] == CONTROLLER_NAME

        # Gateway: Accepted, not Programmed while its waypoint has no ready pod.
        # (metadata.generation as a real API server sets it; the fake sets it for CRDs.)
        gateway: dict[str, Any] = copy.deepcopy(WAYPOINT_GATEWAY)
        gateway["metadata"] = {**gateway["metadata"], "generation": 3}
        server.create(gateway)
        # Pending first says the Deployment is not created yet, then that it has no
        # ready replica: wait for the latter.
        await until(lambda: "no ready replica" in cond(
            server.get("Gateway", "demo", "waypoint"), "Programmed").get("message", ""))
        gw = server.get("Gateway", "demo", "waypoint")
        assert cond(gw, "Programmed")["reason"] == "Pending"
        assert cond(gw, "Accepted")["status"] == "True"
        assert "no ready replica" in cond(gw, "Programmed")["message"]
        assert get_gateway_row(gw) == ("ambient-waypoint", "", "False")

        # The Service gets its cluster IP and the kubelet reports a ready pod.
        svc = copy.deepcopy(server.get("Service", "demo", "waypoint"))
        assert svc is not None
        svc["spec"]["clusterIP"] = "10.96.0.50"
        server.update(svc)
        dep = copy.deepcopy(server.get("Deployment", "demo", "waypoint"))
        assert dep is not None
        dep["status"] = {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}
        server.update(dep)
        await until(lambda: get_gateway_row(server.get("Gateway", "demo", "waypoint"))
                    == ("ambient-waypoint", "10.96.0.50", "True"))
        gw = server.get("Gateway", "demo", "waypoint")
        assert gw is not None
        assert cond(gw, "Programmed")["observedGeneration"] == 3
        assert cond(gw, "Accepted")["observedGeneration"] == 3

        # HTTPRoutes attached to a Service: parent status, Accepted and ResolvedRefs.
        server.create(route("good"))
        server.create(route("refused", header="not a header"))
        missing = route("dangling")
        missing["spec"]["rules"][0]["backendRefs"][0]["name"] = "nope"
        server.create(missing)

        def parent(name: str) -> dict[str, Any]:
            r = server.get("HTTPRoute", "demo", name) or {}
            parents = (r.get("status") or {}).get("parents") or []
            return next((p for p in parents if p["controllerName"] == CONTROLLER_NAME), {})
        await until(lambda: all(parent(n) for n in ("good", "refused", "dangling")))
        good = parent("good")
        assert good["parentRef"] == {"group": "", "kind": "Service", "name": "web"}
        assert cond(None, "Accepted", good["conditions"])["status"] == "True"
        assert cond(None, "ResolvedRefs", good["conditions"])["status"] == "True"
        refused = cond(None, "Accepted", parent("refused")["conditions"])
        assert (refused["status"], refused["reason"]) == ("False", "UnsupportedValue")
        assert "header" in refused["message"]
        dangling = cond(None, "ResolvedRefs", parent("dangling")["conditions"])
        assert (dangling["status"], dangling["reason"]) == ("False", "BackendNotFound")
        assert "demo/nope" in dangling["message"]

        # Fixed: the refusal clears, with no churn on the others.
        fixed = copy.deepcopy(server.get("HTTPRoute", "demo", "refused"))
        assert fixed is not None
        fixed["spec"]["rules"][0]["matches"][0]["headers"][0]["name"] = "x-ok"
        server.update(fixed)
        await until(lambda: cond(None, "Accepted", parent("refused")["conditions"])
                    .get("status") == "True")


@pytest.mark.skipif(kubectl_path() is None, reason="needs kubectl")
async def test_kubectl_get_shows_programmed_and_a_refused_routes_reason(
        tmp_path: Path) -> None:
    """The real kubectl (server-side printing with the Gateway API printer columns)."""
    tls = FakeApiServer(bookmark_interval=0.2)
    await tls.start(tls_context(tmp_path))
    populate(tls)
    try:
        async with kube_controller(tls, tmp_path / "c"):
            tls.create(WAYPOINT_GATEWAY)
            await until(lambda: tls.get("NetworkPolicy", "demo", "waypoint") is not None)
            svc = copy.deepcopy(tls.get("Service", "demo", "waypoint"))
            assert svc is not None
            svc["spec"]["clusterIP"] = "10.96.0.50"
            tls.update(svc)
            dep = copy.deepcopy(tls.get("Deployment", "demo", "waypoint"))
            assert dep is not None
            dep["status"] = {"replicas": 1, "readyReplicas": 1}
            tls.update(dep)
            tls.create(route("refused", header="not a header"))
            await until(lambda: get_gateway_row(tls.get("Gateway", "demo", "waypoint"))[2]
                        == "True" and bool(((tls.get("HTTPRoute", "demo", "refused") or {})
                                            .get("status") or {}).get("parents")))
            table = await kubectl(tls, tmp_path, "get", "gatewayclass,gateway,httproute",
                                  "-A")
            print(table)
            rows = [line.split() for line in table.splitlines()]
            assert rows[1][:3] == ["gatewayclass.gateway.networking.k8s.io/ambient-waypoint",
                    CONTROLLER_NAME, "True"]
            gateway = next(r for r in rows if r[1:2] ==
                           ["gateway.gateway.networking.k8s.io/waypoint"])
            assert gateway[:5] == ["demo", "gateway.gateway.networking.k8s.io/waypoint",
                                   "ambient-waypoint", "10.96.0.50", "True"]
            reason = await kubectl(
                tls, tmp_path, "-n", "demo", "get", "httproute", "refused", "-o",
                "jsonpath={.status.parents[0].conditions[0].reason}: "
                "{.status.parents[0].conditions[0].message}")
            print(reason)
            assert reason.startswith("UnsupportedValue: refused by the controller")
            assert "header" in reason
    finally:
        await tls.stop()

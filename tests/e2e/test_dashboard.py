"""`ambientctl dashboard` in a real browser: a demo mesh (no Prometheus, so the
dashboard scrapes the proxies itself), its demo traffic, the dashboard process, and
Debian's headless Chromium loading the page. Asserts on the DOM the page's script
built from live data (graph edges drawn by cytoscape, the edge table, golden
metrics with sparklines, the denial with its policy, health) and saves a screenshot.

Set AMBIENT_DASHBOARD_SCREENSHOT=PATH to keep the screenshot (docs/dashboard.png
was made that way)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.observability_support import (
    DashboardProcess,
    DemoMesh,
    chromium,
    dashboard,
    demo_mesh,
    wait_for,
)

pytestmark = [pytest.mark.netns, pytest.mark.e2e]


class Dom(HTMLParser):
    """Every element's tag, classes and attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def rows(self, cls: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == "tr" and cls in a.get("class", "").split()]

    def by_id(self, ident: str) -> dict[str, str]:
        return next(a for _, a in self.elements if a.get("id") == ident)


def edges_live(d: DashboardProcess) -> dict[str, Any] | None:
    state = d.state()
    edges = {e["id"]: e for e in (state.get("graph") or {}).get("edges", [])}
    http = edges.get("demo/frontend->svc:demo/catalog:tcp")
    denied = edges.get("legacy/client->demo/inventory:tcp")
    spark = max((len(w["spark"]) for w in state["workloads"]), default=0)
    l7 = edges.get("demo/frontend->svc:demo/catalog:http", {}).get("denied", 0) > 0
    if http and http["rps"] > 0 and denied and denied["denied"] > 0 and l7 and spark >= 3:
        return state
    return None


@pytest.fixture(scope="module")
def mesh() -> Iterator[DemoMesh]:
    with demo_mesh(observability=False) as m:
        yield m


@pytest.fixture(scope="module")
def live(mesh: DemoMesh) -> Iterator[DashboardProcess]:
    with dashboard(mesh) as d:
        mesh.traffic()  # after the dashboard's first scrape: its rates see all of it
        mesh.delete_items()  # refused by the waypoint's L7 policy catalog-no-delete
        wait_for("live rates and the denial in the dashboard", lambda: edges_live(d))
        yield d


def test_state_comes_from_a_direct_scrape_without_prometheus(live: DashboardProcess) -> None:
    state = live.state()
    assert state["source"] == "direct scrape of every proxy"
    assert state["health"]["healthy"] is True, state["health"]["problems"]


def test_dashboard_listens_on_loopback_only(live: DashboardProcess) -> None:
    port = live.url.rstrip("/").rsplit(":", 1)[1]
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
    listeners = [line.split()[3] for line in out.stdout.splitlines() if line.strip()]
    assert listeners == [f"127.0.0.1:{port}"]


def test_browser_shows_the_demo_graph(live: DashboardProcess, tmp_path: Path) -> None:
    html = chromium(live.url, tmp_path / "profile", "--virtual-time-budget=10000",
                    "--dump-dom")
    dom = Dom()
    dom.feed(html)
    assert dom.by_id("graph") and dom.elements, html[:2000]
    body = next(a for t, a in dom.elements if t == "body")
    assert body.get("data-ready") == "true", "the page never drew a state"
    edges = dom.rows("edge")
    drawn = int(dom.by_id("graph")["data-rendered-edges"])
    assert drawn == len(edges) >= 5, (drawn, edges)  # cytoscape drew every edge

    def edge(src: str, dst: str) -> dict[str, str]:
        found = [e for e in edges if e["data-source"] == src and e["data-destination"] == dst]
        pairs = [(e["data-source"], e["data-destination"]) for e in edges]
        assert found, f"no edge {src} -> {dst} in {pairs}"
        return found[0]

    # frontend -> catalog via the waypoint, mTLS, live; and on to the canary versions.
    to_catalog = [e for e in edges if (e["data-source"], e["data-destination"]) == (
        "demo/frontend", "svc:demo/catalog")]
    assert to_catalog and all(e["data-waypoint"] == "demo/waypoint" and e["data-mtls"] == "true"
                              for e in to_catalog), to_catalog
    assert any(float(e["data-rps"]) > 0 for e in to_catalog if e["data-protocol"] == "tcp")
    for version in ("catalog-v1", "catalog-v2"):
        http = [e for e in edges if e["data-destination"] == f"svc:demo/{version}"]
        assert http and all(e["data-waypoint"] == "demo/waypoint" and e["data-mtls"] == "true"
                            for e in http), http
    assert sum(float(e["data-rps"]) for e in edges
               if e["data-destination"].startswith("svc:demo/catalog-")) > 0
    # raw TCP over mTLS, and plaintext from outside the mesh.
    inventory = edge("demo/frontend", "demo/inventory")
    assert inventory["data-mtls"] == "true" and float(inventory["data-rps"]) > 0
    assert edge("legacy/client", "demo/frontend")["data-mtls"] == "false"
    # legacy -> inventory: denied, naming the policy.
    denied = edge("legacy/client", "demo/inventory")
    assert "denied" in denied["class"].split() and int(denied["data-denied"]) >= 2
    assert denied["data-policy"] == "demo/inventory-frontend-only"
    # frontend -> catalog DELETE: denied at the waypoint (L7), naming its policy.
    refused = [e for e in to_catalog if "denied" in e["class"].split()]
    assert [(e["data-protocol"], e["data-policy"]) for e in refused] == [
        ("http", "demo/catalog-no-delete")], to_catalog
    assert sorted((d["data-source"], d["data-destination"], d["data-policy"])
                  for d in dom.rows("denial")) == [
        ("demo/frontend", "svc:demo/catalog", "demo/catalog-no-delete"),
        ("legacy/client", "demo/inventory", "demo/inventory-frontend-only")]
    # Source workload, namespace and principal are right on every mesh (mTLS) edge.
    for e in edges:
        if e["data-mtls"] == "true" and not e["data-source"].startswith("svc:"):
            assert "unknown" not in e["data-source"], e
            ns = e["data-source"].split("/")[0]
            assert e["data-principal"].startswith(f"spiffe://cluster.local/ns/{ns}/sa/"), e
    # Golden metrics with sparklines, and health.
    workloads = {w["data-workload"] for w in dom.rows("workload")}
    assert {"demo/frontend", "demo/inventory"} <= workloads, workloads
    sparks = [a for t, a in dom.elements if t == "svg" and "spark" in a.get("class", "")]
    assert sparks and max(int(s["data-points"]) for s in sparks) >= 2
    checks = dom.rows("check")
    assert checks and all(c["data-ok"] == "true" for c in checks)


def test_browser_screenshot(live: DashboardProcess, tmp_path: Path) -> None:
    shot = tmp_path / "dashboard.png"
    chromium(live.url, tmp_path / "profile", "--virtual-time-budget=10000",
             "--window-size=1400,1500", "--hide-scrollbars", f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    keep = os.environ.get("AMBIENT_DASHBOARD_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


def test_unreachable_prometheus_falls_back_to_scraping_and_says_so(mesh: DemoMesh) -> None:
    from tests.e2e.test_cli_support import free_port

    gone = f"http://127.0.0.1:{free_port()}"
    with dashboard(mesh, "--prometheus", gone) as d:
        state = wait_for("a dashboard state", lambda: d.state().get("graph") and d.state())
        assert state["source"] == "direct scrape of every proxy"
        assert any(p.startswith(f"Prometheus {gone}") for p in state["problems"]), state
        assert "falling back to scraping the proxies" in state["problems"]
        assert state["graph"]["edges"]  # the graph is still drawn, from the proxies

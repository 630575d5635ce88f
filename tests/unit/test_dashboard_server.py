"""The dashboard server's refresh, without a mesh: when a refresh fails, the page
keeps the last graph marked stale, and health turns unknown (never stays healthy)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from ambientctl.context import MeshContext
from ambientctl.dashboard.server import Dashboard
from ambientctl.layout import MeshLayout


def test_failed_refresh_keeps_graph_marks_stale_and_health_unknown(tmp_path: Path) -> None:
    dash = Dashboard(MeshContext(MeshLayout("gone", tmp_path)))  # no mesh.json: fails
    graph = {"nodes": [{"id": "demo/a"}], "edges": []}
    dash.state = {"graph": graph, "health": {"healthy": True, "checks": []},
                  "problems": [], "stale": False}

    async def once() -> None:
        async with aiohttp.ClientSession() as session:
            await dash.tick(session)

    asyncio.run(once())
    assert dash.failures == 1
    assert dash.state["graph"] == graph and dash.state["stale"] is True
    assert dash.state["health"]["healthy"] is False
    assert dash.state["problems"][0].startswith("refresh failed: ")
    assert "gone" in dash.state["problems"][0]  # says which mesh is not running

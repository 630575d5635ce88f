"""`ambient-controller --source kubernetes` passes its flags to Kubernetes mode (issue
15 item 3: --advertise-addr was ignored, waypoint pods always got the default
controller Service)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import controller.kube.serve as kube_serve
import controller.main as controller_main
from controller.app import ControllerSettings
from controller.kube.serve import KubeSettings
from controller.kube.waypoints import render
from controller.main import main


def _run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> KubeSettings:
    seen: list[KubeSettings] = []

    async def fake_serve(settings: ControllerSettings, kube: KubeSettings) -> None:
        seen.append(kube)

    monkeypatch.setattr(kube_serve, "serve_until_signal", fake_serve)
    # main() configures process-wide logging (level filter, cached loggers): in this
    # shared test process that would silence later tests' log capture.
    monkeypatch.setattr(controller_main, "configure_logging", lambda *_a, **_k: None)
    result = CliRunner().invoke(main, ["--source", "kubernetes", "--state-dir",
                                       str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    return seen[0]


def test_advertise_addr_is_what_waypoint_pods_dial(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    kube = _run(monkeypatch, tmp_path, "--advertise-addr", "ambient-cp.mesh.svc:15012")
    assert kube.controller_service == "ambient-cp.mesh.svc:15012"
    gateway: dict[str, Any] = {"metadata": {"name": "wp", "namespace": "demo", "uid": "u"}}
    deployment = render(gateway, image="i", controller_addr=kube.controller_service)[1]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--controller") + 1] == "ambient-cp.mesh.svc:15012"


def test_without_advertise_addr_waypoints_dial_the_controller_service(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    kube = _run(monkeypatch, tmp_path)
    assert kube.controller_service == KubeSettings().controller_service

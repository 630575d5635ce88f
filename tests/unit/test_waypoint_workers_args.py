"""The Gateway annotation ambientmesh.io/waypoint-workers becomes `--workers N` on the
waypoint's command, in the local runtime's pod and in the Kubernetes Deployment; an
absent, unreadable or out-of-range value runs one process (never no waypoint)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.kube.waypoints import render
from controller.view import waypoint_pod
from mesh.config import Gateway
from mesh.config.annotations import (
    WAYPOINT_HBONE_MAX_STREAMS,
    WAYPOINT_WORKERS,
    WAYPOINT_WORKERS_MAX,
    waypoint_workers,
)


def gateway(annotations: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "wp", "namespace": "shop", "uid": "u",
                         "annotations": annotations},
            "spec": {"gatewayClassName": "ambient-waypoint"}}


@pytest.mark.parametrize(("value", "workers"), [
    (None, 1), ("2", 2), (" 3 ", 3), ("1", 1), ("0", 1), ("-2", 1), ("two", 1), ("", 1),
    ("999", WAYPOINT_WORKERS_MAX),
])
def test_annotation_to_workers(value: str | None, workers: int) -> None:
    annotations = {} if value is None else {WAYPOINT_WORKERS: value}
    assert waypoint_workers(annotations) == workers
    expected = ["--workers", str(workers)] if workers > 1 else []
    pod = waypoint_pod(Gateway.model_validate(gateway(annotations)), "10.0.0.1:15012")
    command = pod.spec.containers[0].command
    assert command[:5] == ["ambient-waypoint", "--name", "wp", "--namespace", "shop"]
    assert command[5:] == expected
    deployment = render(gateway(annotations), image="img", controller_addr="c:15012")[1]
    assert deployment["kind"] == "Deployment"
    kcommand = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert ("--workers" in kcommand) == (workers > 1)
    if workers > 1:
        assert kcommand[kcommand.index("--workers") + 1] == str(workers)


@pytest.mark.parametrize(("value", "args"), [
    ("16", ["--hbone-max-streams", "16"]), ("0", []), ("x", []), ("", [])])
def test_hbone_max_streams_annotation(value: str, args: list[str]) -> None:
    annotations = {WAYPOINT_WORKERS: "2", WAYPOINT_HBONE_MAX_STREAMS: value}
    pod = waypoint_pod(Gateway.model_validate(gateway(annotations)), "10.0.0.1:15012")
    assert pod.spec.containers[0].command[5:] == ["--workers", "2", *args]
    kcommand = render(gateway(annotations), image="img", controller_addr="c:15012")[1][
        "spec"]["template"]["spec"]["containers"][0]["command"]
    assert kcommand[-len(args) - 2:] == ["--workers", "2", *args]

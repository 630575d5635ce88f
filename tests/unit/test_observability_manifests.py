"""`ambientctl install --observability`: the base plus a Prometheus that can discover
(RBAC: pods get/list/watch, nothing more) and scrape the controller, every node agent
and every waypoint on the ports they really serve metrics on; and the local mode's
generated prometheus.yml. Debian's promtool is built without Kubernetes discovery,
so the Kubernetes config is checked here by structure, the local one by promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from ambientctl.commands.install import command as install_command
from ambientctl.observability import render_config
from mesh.ports import METRICS_PORT

ROOT = Path(__file__).resolve().parents[2]


def rendered(*args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(install_command, list(args))
    assert result.exit_code == 0, result.output
    return [d for d in yaml.safe_load_all(result.output) if d]


def test_observability_adds_prometheus_to_the_base() -> None:
    base = {(d["kind"], d["metadata"]["name"]) for d in rendered()}
    full = rendered("--observability")
    added = {(d["kind"], d["metadata"]["name"]) for d in full} - base
    assert added == {(k, "ambient-prometheus") for k in (
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment",
        "Service")}
    role = next(d for d in full if d["kind"] == "ClusterRole"
                and d["metadata"]["name"] == "ambient-prometheus")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"],
                              "verbs": ["get", "list", "watch"]}]
    for d in full:
        if (d["kind"], d["metadata"]["name"]) in added and d["kind"] not in (
                "ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == "ambient-system", d


def scrape_jobs() -> dict[str, dict[str, Any]]:
    cm = next(d for d in rendered("--observability") if d["kind"] == "ConfigMap"
              and d["metadata"]["name"] == "ambient-prometheus")
    config = yaml.safe_load(cm["data"]["prometheus.yml"])
    return {j["job_name"]: j for j in config["scrape_configs"]}


def test_each_component_is_scraped_on_the_port_it_serves_metrics_on() -> None:
    jobs = scrape_jobs()
    controller_yaml = (ROOT / "daemonset/base/controller.yaml").read_text()
    agent_yaml = (ROOT / "daemonset/base/nodeagent.yaml").read_text()
    ports = {name: next(r["replacement"] for r in j["relabel_configs"]
                        if r.get("target_label") == "__address__")
             for name, j in jobs.items() if name.startswith("ambient-")}
    assert ports["ambient-controller"] == "$1:15014" and "--admin-addr=0.0.0.0:15014" in \
        controller_yaml
    assert ports["ambient-nodeagent"] == "$1:15021" and "--health-addr=0.0.0.0:15021" in \
        agent_yaml
    assert ports["ambient-waypoint"] == f"$1:{METRICS_PORT}"
    for job in jobs.values():
        for rule in job["relabel_configs"]:
            re.compile(rule.get("regex", "(.*)"))  # RE2 syntax is a subset here


def test_local_config_is_valid_for_debians_prometheus(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool (Debian's prometheus) is missing: run scripts/setup.sh"
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(render_config(15091)))
    out = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr

"""ambientctl driven as a user drives it, against a controller started alone: bad input
gives a clear error and a non-zero exit; good input round-trips."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_cli_support import AMBIENTCTL, Controller, controller_alone, ctl

pytestmark = pytest.mark.e2e

POLICY = """\
apiVersion: ambientmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: deny-delete
  namespace: demo
spec:
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["DELETE"]
"""


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    with controller_alone(tmp_path_factory.mktemp("controller")) as c:
        yield c


def test_malformed_yaml_is_refused_with_file_and_line(controller: Controller,
                                                      tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [demo\n")
    out = controller.ctl("apply", "-f", str(bad))
    assert out.returncode == 1
    assert "error: invalid configuration, nothing was applied" in out.stderr
    assert "broken.yaml doc 1: invalid YAML: line" in out.stderr
    assert "Traceback" not in out.stderr
    listed = json.loads(controller.ctl("get", "namespaces", "-o", "json").stdout)
    assert listed["items"] == []


def test_invalid_field_is_named(controller: Controller, tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text(POLICY.replace("action: DENY", "action: MAYBE"))
    out = controller.ctl("apply", "-f", str(bad))
    assert out.returncode == 1
    assert "policy.yaml doc 1 AuthorizationPolicy demo/deny-delete: spec.action" in out.stderr


def test_apply_get_delete_round_trip(controller: Controller, tmp_path: Path) -> None:
    out = controller.ctl("apply", "-f", "-", input=POLICY)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "AuthorizationPolicy demo/deny-delete created"
    again = controller.ctl("apply", "-f", "-", input=POLICY)
    assert again.stdout.strip() == "AuthorizationPolicy demo/deny-delete unchanged"
    listed = json.loads(controller.ctl("get", "policies", "-n", "demo", "-o", "json").stdout)
    assert listed["kind"] == "List"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["deny-delete"]
    table = controller.ctl("get", "policies", "-A")
    assert "deny-delete" in table.stdout and "DENY" in table.stdout
    gone = controller.ctl("delete", "authorizationpolicy", "deny-delete", "-n", "demo")
    assert gone.returncode == 0 and "deleted" in gone.stdout
    twice = controller.ctl("delete", "authorizationpolicy", "deny-delete", "-n", "demo")
    assert twice.returncode == 1 and "not found" in twice.stdout


def test_unknown_kind(controller: Controller) -> None:
    out = controller.ctl("get", "widgets")
    assert out.returncode == 2
    assert "unknown kind 'widgets'" in out.stderr and "hint: known kinds" in out.stderr


def test_unknown_pod_for_explain(controller: Controller) -> None:
    out = controller.ctl("explain", "demo/nosuch", "catalog.demo:80")
    assert out.returncode == 1
    assert "pod demo/nosuch not found" in out.stderr


def test_bad_destination_syntax(controller: Controller) -> None:
    out = controller.ctl("explain", "demo/a", "catalog:eighty")
    assert out.returncode == 2
    assert "port 'eighty' is not a number" in out.stderr


def test_missing_file(controller: Controller) -> None:
    out = controller.ctl("apply", "-f", "/nonexistent/x.yaml")
    assert out.returncode == 2
    assert "no such file or directory" in out.stderr


def test_controller_unreachable_says_how_to_start_it() -> None:
    out = ctl("--admin-addr", "127.0.0.1:1", "get", "pods", "-A")
    assert out.returncode == 1
    assert "cannot reach the controller admin API at 127.0.0.1:1" in out.stderr
    assert "hint: start the local mesh with `sudo ambientctl up`" in out.stderr


def test_every_command_has_help_with_examples() -> None:
    for command in ("up", "down", "status", "get", "apply", "delete", "exec", "certs",
                    "metrics", "logs", "explain", "install", "check"):
        out = ctl(command, "--help")
        assert out.returncode == 0, command
        assert "Example" in out.stdout, command
    assert "dump" in ctl("config", "--help").stdout
    assert "_AMBIENTCTL_COMPLETE" in ctl("completion", "bash").stdout


@pytest.mark.netns
def test_not_root_explains_why() -> None:
    assert os.geteuid() == 0
    # Not root, but able to read the checkout wherever it lives (a 0700 /root or
    # mktemp -d folder): CAP_DAC_READ_SEARCH lets uid 65534 reach the venv without
    # making it root, so the test checks the message, not the checkout's location.
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
                          AMBIENTCTL, "--cluster", "amtnoroot", "up"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "`ambientctl up` needs root" in res.stderr
    assert "network namespaces, cgroups and eBPF" in res.stderr


@pytest.mark.netns
def test_exec_unknown_pod() -> None:
    out = ctl("--cluster", "amtnopods", "exec", "demo/nosuch", "--", "true")
    assert out.returncode == 1
    assert "pod demo/nosuch not found" in out.stderr


def test_status_without_a_mesh_fails_and_says_what_to_do() -> None:
    out = ctl("--cluster", "amtnomesh", "--admin-addr", "127.0.0.1:1", "status", "-o", "json")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["healthy"] is False
    assert any("controller admin API" in p for p in report["problems"])

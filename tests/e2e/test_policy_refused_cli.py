"""`ambientctl apply -f` of a policy that would grant more than its author wrote (an
empty `source: {}`, an unknown field, an emptied selector) exits non-zero naming the
field, and the policy already in force stays as it was (issue 20, finding 2). The real
CLI against a real ambient-controller process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_cli_support import Controller, controller_alone

pytestmark = pytest.mark.e2e

GOOD = """\
apiVersion: ambientmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: db-from-backend
  namespace: demo
spec:
  selector:
    matchLabels:
      app: db
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/demo/sa/backend"]
"""
WHERE = "policy.yaml doc 1 AuthorizationPolicy demo/db-from-backend: "

CASES = [
    ('principals: ["cluster.local/ns/demo/sa/backend"]', "{}",
     "spec.rules[0].from[0].source: must set at least one field (an empty source would "
     "match any peer)"),
    ("principals:", "principal:",
     "spec.rules[0].from[0].source.principal: unknown field"),
    ("matchLabels:\n      app: db", "{}",
     "spec.selector: must set matchLabels (an empty selector selects every workload of "
     "the namespace; omit selector to mean that)"),
]


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    with controller_alone(tmp_path_factory.mktemp("controller")) as c:
        yield c


def in_force(controller: Controller) -> list[dict[str, object]]:
    out = controller.ctl("get", "authorizationpolicies", "-n", "demo", "-o", "json")
    assert out.returncode == 0, out.stderr
    items: list[dict[str, object]] = json.loads(out.stdout)["items"]
    return items


@pytest.mark.parametrize(("old", "new", "message"), CASES, ids=["empty-source",
                                                                "unknown-field",
                                                                "empty-selector"])
def test_widening_policy_is_refused_and_the_old_one_stays(
        controller: Controller, tmp_path: Path, old: str, new: str, message: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(GOOD)
    out = controller.ctl("apply", "-f", str(policy))
    assert out.returncode == 0, out.stderr
    before = in_force(controller)
    (spec,) = [p["spec"] for p in before]
    assert spec["selector"] == {"matchLabels": {"app": "db"}}  # type: ignore[index]
    assert spec["rules"][0]["from"][0]["source"]["principals"] == [  # type: ignore[index]
        "cluster.local/ns/demo/sa/backend"]

    assert old in GOOD
    policy.write_text(GOOD.replace(old, new))
    out = controller.ctl("apply", "-f", str(policy))
    assert out.returncode == 1, out.stdout
    assert "nothing was applied" in out.stderr
    assert WHERE + message in out.stderr
    assert "Traceback" not in out.stderr
    assert in_force(controller) == before

"""Local mode: a config file that does not validate when the controller starts (edited
by hand while it was down, or written before validation refused `source: {}`) has no
previous version to keep. Its security policies must not simply vanish, which would
fail open: each is in force as a stand-in that grants nothing (as in Kubernetes mode,
mesh.config.standin) until the file is fixed."""

from __future__ import annotations

from pathlib import Path

from controller.configdir import ConfigDirectory
from mesh.config import AuthorizationPolicy, ObjectKey, PeerAuthentication
from mesh.config.standin import is_stand_in

POLICIES = """\
apiVersion: ambientmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: db, namespace: demo}
spec:
  selector: {matchLabels: {app: db}}
  rules: [{from: [{source: {}}]}]
---
apiVersion: ambientmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-legacy, namespace: demo}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [legacy]}}]}]
---
apiVersion: ambientmesh.io/v1alpha1
kind: PeerAuthentication
metadata: {name: default, namespace: demo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec: {ports: [{port: 5432}]}
"""
DB = ObjectKey("AuthorizationPolicy", "demo", "db")
NO_LEGACY = ObjectKey("AuthorizationPolicy", "demo", "no-legacy")
PA = ObjectKey("PeerAuthentication", "demo", "default")


def test_a_file_refused_at_start_keeps_its_policies_as_stand_ins(tmp_path: Path) -> None:
    (tmp_path / "policies.yaml").write_text(POLICIES)
    cfg = ConfigDirectory(tmp_path)
    cfg.reload()
    assert [str(i) for i in cfg.errors] == [
        "policies.yaml doc 1 AuthorizationPolicy demo/db: spec.rules[0].from[0].source: must "
        "set at least one field (an empty source would match any peer)"]
    objects = cfg.resources()
    assert set(objects) == {DB, NO_LEGACY, PA}  # the Service is not in force: refused
    db = objects[DB]
    assert isinstance(db, AuthorizationPolicy) and is_stand_in(db)
    assert db.spec.action == "ALLOW" and db.spec.rules == []  # allows nothing, not all
    assert db.spec.selector is not None and db.spec.selector.match_labels == {"app": "db"}
    deny = objects[NO_LEGACY]  # valid itself, refused with its file: denies everything
    assert isinstance(deny, AuthorizationPolicy) and deny.spec.action == "DENY"
    assert [r.from_ for r in deny.spec.rules] == [[]]
    pa = objects[PA]
    assert isinstance(pa, PeerAuthentication) and pa.spec.mtls.mode == "STRICT"

    (tmp_path / "policies.yaml").write_text(POLICIES.replace("source: {}",
                                                             "source: {principals: [a/b]}"))
    cfg.reload()
    assert cfg.errors == []
    assert not any(is_stand_in(o) for o in cfg.resources().values())
    assert len(cfg.resources()) == 4


def test_a_file_broken_later_keeps_what_it_held(tmp_path: Path) -> None:
    good = POLICIES.replace("source: {}", "source: {principals: [a/b]}")
    (tmp_path / "policies.yaml").write_text(good)
    cfg = ConfigDirectory(tmp_path)
    cfg.reload()
    before = cfg.resources()
    (tmp_path / "policies.yaml").write_text(POLICIES)
    cfg.reload()
    assert cfg.errors and cfg.resources() == before

"""The file source (controller.configdir): homes of objects, refusal of bad files with
the last good content kept, delete by YAML (the backoff schedule is tested in test_backoff.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.configdir import ConfigDirectory, keys_from_yaml
from mesh.config import ConfigError, ObjectKey

SVC = ("apiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: demo}\n"
       "spec: {ports: [{port: %d}]}\n")


def test_apply_homes_and_rewrites_in_place(tmp_path: Path) -> None:
    d = ConfigDirectory(tmp_path)
    d.reload()
    changes = d.apply(SVC % ("a", 1) + "---\n" + SVC % ("b", 2), "../../etc/evil name.yml")
    assert [c.action for c in changes] == ["created", "created"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil-name.yml"]
    changes = d.apply(SVC % ("b", 3), "other.yaml")
    assert [c.action for c in changes] == ["configured"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil-name.yml"]
    assert "port: 3" in (tmp_path / "evil-name.yml").read_text()
    assert [c.action for c in d.apply(SVC % ("b", 3), "x.yaml")] == ["unchanged"]
    assert d.reload() is False


def test_invalid_file_keeps_last_good(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(SVC % ("a", 1))
    (tmp_path / "notes.txt").write_text("ignored")
    d = ConfigDirectory(tmp_path)
    assert d.reload() is True
    (tmp_path / "a.yaml").write_text(SVC % ("a", 0))
    assert d.reload() is False
    assert [str(i) for i in d.errors] == [
        "a.yaml doc 1 Service demo/a: spec.ports[0].port: must be >= 1 (got 0)"]
    assert list(d.objects()) == [ObjectKey("Service", "demo", "a")]
    (tmp_path / "a.yaml").write_text(SVC % ("a", 5))
    assert d.reload() is True and not d.errors
    (tmp_path / "a.yaml").unlink()
    assert d.reload() is True and not d.objects()


def test_duplicate_across_files_first_file_wins(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(SVC % ("a", 2))
    (tmp_path / "a.yaml").write_text(SVC % ("a", 1))
    d = ConfigDirectory(tmp_path)
    d.reload()
    (doc,) = d.objects().values()
    assert doc.file == "a.yaml"


def test_refused_apply_writes_nothing(tmp_path: Path) -> None:
    d = ConfigDirectory(tmp_path)
    with pytest.raises(ConfigError):
        d.apply(SVC % ("a", 1) + "---\n" + SVC % ("b", 0), "x.yaml")
    assert list(tmp_path.iterdir()) == [] and not d.objects()


def test_delete(tmp_path: Path) -> None:
    d = ConfigDirectory(tmp_path)
    d.apply(SVC % ("a", 1) + "---\n" + SVC % ("b", 2), "x.yaml")
    # Delete by YAML reads only kind and metadata: an invalid spec is fine.
    keys = keys_from_yaml(SVC % ("a", 0), "x.yaml")
    assert [c.action for c in d.delete(keys)] == ["deleted"]
    assert [c.action for c in d.delete(keys)] == ["not found"]
    assert (tmp_path / "x.yaml").exists()
    d.delete([ObjectKey("Service", "demo", "b")])
    assert not (tmp_path / "x.yaml").exists()
    with pytest.raises(ConfigError, match="unknown kind 'Thing'"):
        keys_from_yaml("kind: Thing\nmetadata: {name: x}\n", "t.yaml")


"""The file source: a directory of Kubernetes-style YAML, the persistent home of every
user object in local mode.

Each object lives in exactly one file (its "home"). Re-applying an object rewrites
its document in its home file; a new object is appended to a file named after the
applied source. Files edited by hand are picked up by the watcher: a file that no
longer validates is refused as a whole and what it held before stays in force. A file
refused with nothing before it (at start) keeps its security policies in force as
stand-ins that grant nothing (mesh.config.standin): leaving them out would fail open."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml
from pydantic import ValidationError

from controller.state import write_atomic
from mesh.config import ConfigError, ConfigIssue, Document, ObjectKey, Resource, parse_documents
from mesh.config.kinds import KINDS
from mesh.config.standin import stand_in

_log = structlog.get_logger("controller.configdir")
SUFFIXES = (".yaml", ".yml")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Change:
    key: ObjectKey
    action: str  # created | configured | unchanged | deleted | not found

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.key.kind, "namespace": self.key.namespace, "name": self.key.name,
                "action": self.action}


def _file_name(source: str) -> str:
    name = _SAFE.sub("-", Path(source).name or "applied").strip("-.") or "applied"
    if not name.endswith(SUFFIXES):
        name += ".yaml"
    return name


_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _stand_ins(text: str, name: str, error: ConfigError) -> list[Document]:
    """Stand-ins for the security policies of a refused file that had no valid version."""
    try:
        raws = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return []  # nothing can be read: the error in status is all there is
    out = []
    for index, raw in enumerate(raws, start=1):
        if not isinstance(raw, dict):
            continue
        issues = [i for i in error.issues if i.document == index]
        reason = str(issues[0]) if issues else f"refused with its file: {error.first}"
        try:
            obj = stand_in(raw, reason)
        except ValidationError:
            obj = None
        if obj is not None:
            out.append(Document(obj, raw, name, index))
    return out


def _dump(docs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


class ConfigDirectory:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, list[Document]] = {}
        self._errors: dict[str, ConfigError] = {}
        # Refused files that had no valid version: stand-ins for their policies.
        self._stand_ins: dict[str, list[Document]] = {}
        # Content last read or written per file: unchanged files are not parsed again.
        self._seen: dict[str, bytes] = {}

    # -- reading ------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read every file; returns whether what is in force changed."""
        before = self.objects()
        present = {p.name for p in self.path.iterdir()
                   if p.is_file() and p.name.endswith(SUFFIXES) and not p.name.startswith(".")}
        for name in list(self._files) + list(self._errors):
            if name not in present:
                self._files.pop(name, None)
                self._errors.pop(name, None)
                self._seen.pop(name, None)
                self._stand_ins.pop(name, None)
        for name in sorted(present):
            try:
                data = (self.path / name).read_bytes()
                if self._seen.get(name) == data:
                    continue
                self._seen[name] = data
                self._files[name] = parse_documents(data.decode(), name)
                self._errors.pop(name, None)
                self._stand_ins.pop(name, None)
            except (OSError, UnicodeDecodeError) as e:
                self._errors[name] = ConfigError([ConfigIssue(name, 0, "", "", str(e))])
            except ConfigError as e:
                if name not in self._errors or str(self._errors[name]) != str(e):
                    _log.warning("config_file_refused", file=name, error=str(e))
                self._errors[name] = e
                if name not in self._files:
                    self._stand_ins[name] = _stand_ins(data.decode(), name, e)
        return self._resources(before) != self._resources(self.objects())

    @staticmethod
    def _resources(docs: dict[ObjectKey, Document]) -> dict[ObjectKey, Resource]:
        return {k: d.resource for k, d in docs.items()}

    def objects(self) -> dict[ObjectKey, Document]:
        """The merged view: the first file (by name) defining an object wins."""
        out: dict[ObjectKey, Document] = {}
        for name in sorted(self._files):
            for doc in self._files[name]:
                if doc.key in out:
                    _log.warning("duplicate_object", object=str(doc.key), file=name,
                                 kept=out[doc.key].file)
                    continue
                out[doc.key] = doc
        for name in sorted(self._stand_ins):
            for doc in self._stand_ins[name]:
                out.setdefault(doc.key, doc)
        return out

    def resources(self) -> dict[ObjectKey, Resource]:
        return self._resources(self.objects())

    @property
    def errors(self) -> list[ConfigIssue]:
        return [i for e in self._errors.values() for i in e.issues]

    # -- writing ------------------------------------------------------------------

    def _homes(self) -> dict[ObjectKey, str]:
        homes: dict[ObjectKey, str] = {}
        for name in sorted(self._files):
            for d in self._files[name]:
                homes.setdefault(d.key, name)
        return homes

    def _write(self, name: str, docs: list[Document]) -> None:
        path = self.path / name
        if docs:
            data = _dump([d.raw for d in docs]).encode()
            write_atomic(path, data)
            self._seen[name] = data
            self._files[name] = [Document(d.resource, d.raw, name, i)
                                 for i, d in enumerate(docs, start=1)]
        else:
            path.unlink(missing_ok=True)
            self._files.pop(name, None)
            self._seen.pop(name, None)
        self._errors.pop(name, None)
        self._stand_ins.pop(name, None)

    def apply(self, text: str, source: str) -> list[Change]:
        """Validate everything first (ConfigError: nothing written), then persist."""
        docs = parse_documents(text, Path(source).name or source)
        current = self.objects()
        homes = self._homes()
        target = _file_name(source)
        touched: dict[str, dict[ObjectKey, Document]] = {}
        changes = []
        for doc in docs:
            old = current.get(doc.key)
            if old is not None and old.resource == doc.resource:
                changes.append(Change(doc.key, "unchanged"))
                continue
            home = homes.get(doc.key, target)
            if home not in touched:
                touched[home] = {d.key: d for d in self._files.get(home, [])}
            touched[home][doc.key] = doc
            changes.append(Change(doc.key, "configured" if old is not None else "created"))
        for name, by_key in touched.items():
            self._write(name, list(by_key.values()))
        return changes

    def delete(self, keys: list[ObjectKey]) -> list[Change]:
        homes = self._homes()
        changes = []
        touched: dict[str, dict[ObjectKey, Document]] = {}
        for key in keys:
            home = homes.get(key)
            if home is None or (home in touched and key not in touched[home]):
                changes.append(Change(key, "not found"))
                continue
            if home not in touched:
                touched[home] = {d.key: d for d in self._files.get(home, [])}
            del touched[home][key]
            changes.append(Change(key, "deleted"))
        for name, by_key in touched.items():
            self._write(name, list(by_key.values()))
        return changes


def keys_from_yaml(text: str, source: str) -> list[ObjectKey]:
    """Objects named by a YAML text, for `delete -f`: only kind and metadata are read,
    so a file that no longer validates can still be deleted."""
    issues = []
    keys = []
    try:
        raw_docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise ConfigError([ConfigIssue(source, 1, "", "", f"invalid YAML: {e}")]) from e
    for i, raw in enumerate(raw_docs, start=1):
        if raw is None:
            continue
        kind = raw.get("kind") if isinstance(raw, dict) else None
        meta = raw.get("metadata") if isinstance(raw, dict) else None
        cls = KINDS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            issues.append(ConfigIssue(source, i, "", "kind", f"unknown kind {kind!r}"))
            continue
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            issues.append(ConfigIssue(source, i, cls.KIND, "metadata.name",
                                      "required field is missing"))
            continue
        ns = (meta.get("namespace") or "default") if cls.NAMESPACED else ""
        keys.append(ObjectKey(cls.KIND, ns, meta["name"]))
    if issues:
        raise ConfigError(issues)
    return keys

"""The last-seen objects of one watched kind and the resourceVersion to resume from
(sans-I/O: the reflector feeds it lists and watch events; tests feed it by hand).

A relist replaces the contents and reports whether anything differs, so a 410 Gone
neither loses a change nor duplicates an object; bookmarks only move the
resourceVersion on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.kube.errors import KubeError, ResourceExpired

Key = tuple[str, str]
KubeObject = dict[str, Any]


def object_key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


@dataclass
class ObjectCache:
    kind: str
    objects: dict[Key, KubeObject] = field(default_factory=dict)
    resource_version: str = ""
    synced: bool = False
    relists: int = 0

    def replace(self, items: Iterable[KubeObject], list_version: str) -> bool:
        """Install a full list; True if it differs from what was held."""
        fresh = {object_key(o): o for o in items}
        changed = (fresh.keys() != self.objects.keys() or any(
            resource_version(o) != resource_version(self.objects[k]) or
            (resource_version(o) == "" and o != self.objects[k]) for k, o in fresh.items()))
        self.objects = fresh
        self.resource_version = list_version
        if self.synced:
            self.relists += 1
        self.synced = True
        return changed

    def apply(self, event_type: str, obj: KubeObject) -> bool:
        """Apply one watch event; True if the cached objects changed."""
        if event_type == "ERROR":
            code = int(obj.get("code") or 0)
            if code == 410:
                raise ResourceExpired(self.kind, self.resource_version)
            raise KubeError(f"{self.kind}: watch error {code} {obj.get('reason', '')}: "
                            f"{obj.get('message', '')}")
        version = resource_version(obj)
        if version:
            self.resource_version = version
        if event_type == "BOOKMARK":
            return False
        key = object_key(obj)
        if event_type == "DELETED":
            return self.objects.pop(key, None) is not None
        if event_type in ("ADDED", "MODIFIED"):
            old = self.objects.get(key)
            self.objects[key] = obj
            return old is None or resource_version(old) != version or old != obj
        raise KubeError(f"{self.kind}: unknown watch event type {event_type!r}")

    def items(self) -> list[KubeObject]:
        return [self.objects[k] for k in sorted(self.objects)]

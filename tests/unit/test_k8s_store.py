"""ObjectCache: list replace, watch events, bookmarks and 410 (sans-I/O)."""

from __future__ import annotations

import pytest

from mesh.kube.errors import KubeError, ResourceExpired
from mesh.kube.store import ObjectCache


def pod(name: str, rv: str, ns: str = "default", **extra: object) -> dict[str, object]:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
            **extra}


def test_replace_reports_change_only_when_something_differs() -> None:
    cache = ObjectCache("Pod")
    assert cache.replace([pod("a", "1"), pod("b", "2")], "10")
    assert cache.synced and cache.resource_version == "10" and cache.relists == 0
    assert not cache.replace([pod("b", "2"), pod("a", "1")], "11")
    assert cache.relists == 1 and cache.resource_version == "11"
    assert cache.replace([pod("a", "3"), pod("b", "2")], "12")  # a modified
    assert cache.replace([pod("a", "3")], "13")  # b deleted
    assert [o["metadata"]["name"] for o in cache.items()] == ["a"]


def test_events_add_modify_delete_and_move_the_version() -> None:
    cache = ObjectCache("Pod")
    cache.replace([], "5")
    assert cache.apply("ADDED", pod("a", "6"))
    assert cache.resource_version == "6"
    assert not cache.apply("MODIFIED", pod("a", "6"))  # same version: no change
    assert cache.apply("MODIFIED", pod("a", "7", spec={"x": 1}))
    assert cache.apply("DELETED", pod("a", "8"))
    assert not cache.apply("DELETED", pod("a", "9"))  # already gone
    assert cache.resource_version == "9" and cache.objects == {}


def test_bookmark_moves_version_without_change() -> None:
    cache = ObjectCache("Pod")
    cache.replace([pod("a", "1")], "1")
    assert not cache.apply("BOOKMARK", {"kind": "Pod", "metadata": {"resourceVersion": "42"}})
    assert cache.resource_version == "42" and len(cache.objects) == 1


def test_same_name_in_two_namespaces_are_two_objects() -> None:
    cache = ObjectCache("Pod")
    cache.replace([pod("a", "1", ns="x"), pod("a", "2", ns="y")], "2")
    assert sorted(cache.objects) == [("x", "a"), ("y", "a")]


def test_error_410_raises_expired_other_errors_raise_kube_error() -> None:
    cache = ObjectCache("Pod")
    cache.replace([], "7")
    with pytest.raises(ResourceExpired, match="resourceVersion 7 is too old"):
        cache.apply("ERROR", {"kind": "Status", "code": 410, "reason": "Expired"})
    with pytest.raises(KubeError, match="watch error 500"):
        cache.apply("ERROR", {"kind": "Status", "code": 500, "reason": "InternalError"})
    with pytest.raises(KubeError, match="unknown watch event"):
        cache.apply("SURPRISE", pod("a", "1"))

"""Typed errors of reading the Kubernetes API; each message says what to check."""

from __future__ import annotations


class KubeError(Exception):
    """Talking to the Kubernetes API failed in a way the caller must handle."""


class ResourceExpired(KubeError):
    """410 Gone: the resourceVersion we hold was compacted away; relist."""

    def __init__(self, kind: str, resource_version: str) -> None:
        self.kind = kind
        self.resource_version = resource_version
        super().__init__(f"{kind}: resourceVersion {resource_version} is too old (410 Gone); "
                         "relisting")

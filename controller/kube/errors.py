"""Typed errors of Kubernetes mode; each message says what to check. Reading errors
(KubeError, ResourceExpired) live with the reflector in mesh.kube.errors."""

from __future__ import annotations

from mesh.kube.errors import KubeError, ResourceExpired

__all__ = ["KubeAuthError", "KubeError", "ResourceExpired"]


class KubeAuthError(KubeError):
    """A caller's service-account token was refused or is not allowed what it asked."""

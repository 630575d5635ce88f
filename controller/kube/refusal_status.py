"""Tells the author, on the object itself, that the controller refused it.

Our CRDs keep unknown fields instead of pruning them, so that a typo reaches the
controller and is refused rather than applied half-erased; the price is that
`kubectl apply` of a typo succeeds. So the controller writes an `Accepted` condition in
the status of its custom resources: False with the reason while an object is refused
(`kubectl get authorizationpolicies` shows it in a column, `kubectl describe` the
message), True again once a valid version is in force. Objects never refused get no
write. Writes go to the status subresource and repeat nothing already there, so any
number of controller replicas may run this; a failed write is retried later."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import structlog
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio.client.exceptions import ApiException

from mesh.config import ObjectKey

_log = structlog.get_logger("controller.kube.status")
GROUP, VERSION = "ambientmesh.io", "v1alpha1"
PLURALS = {"AuthorizationPolicy": "authorizationpolicies",
           "PeerAuthentication": "peerauthentications", "TrafficPolicy": "trafficpolicies"}
CONDITION = "Accepted"
RETRY_AFTER = 5.0
MERGE_PATCH = "application/merge-patch+json"
_MERGE: dict[str, Any] = {"_content_type": MERGE_PATCH}  # the generated stubs omit it


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def desired_condition(raw: dict[str, Any], refused: str | None) -> dict[str, Any] | None:
    """The Accepted condition `raw` should now carry, or None when nothing is to write."""
    status = raw.get("status") or {}
    current = next((c for c in status.get("conditions") or []
                    if isinstance(c, dict) and c.get("type") == CONDITION), None)
    generation = (raw.get("metadata") or {}).get("generation")
    if refused is not None:
        want = {"type": CONDITION, "status": "False", "reason": "Refused", "message": refused}
    elif current is not None and current.get("status") != "True":
        want = {"type": CONDITION, "status": "True", "reason": "Accepted",
                "message": "valid; in force"}
    else:
        return None
    if current is not None and all(current.get(k) == v for k, v in want.items()) \
            and current.get("observedGeneration") == generation:
        return None
    out = {**want, "lastTransitionTime": _now()}
    if generation is not None:
        out["observedGeneration"] = generation
    return out


class RefusalStatusWriter:
    def __init__(self, api: kclient.ApiClient,
                 items: Callable[[str], list[dict[str, Any]]],
                 refused: Callable[[], dict[ObjectKey, str]]) -> None:
        self._api = kclient.CustomObjectsApi(api)
        self._items = items
        self._refused = refused
        self._dirty = asyncio.Event()
        self.writes = 0

    def notify(self) -> None:
        self._dirty.set()

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not await self.reconcile():
                asyncio.get_running_loop().call_later(RETRY_AFTER, self._dirty.set)

    async def reconcile(self) -> bool:
        """Write every condition that differs; False when a write failed."""
        refused = self._refused()
        ok = True
        for kind, plural in PLURALS.items():
            for raw in self._items(kind):
                meta = raw.get("metadata") or {}
                ns, name = meta.get("namespace", ""), meta.get("name", "")
                condition = desired_condition(raw, refused.get(ObjectKey(kind, ns, name)))
                if condition is None:
                    continue
                try:
                    # A dict body goes out as JSON patch unless told: the API server
                    # refuses that (400), so say merge patch.
                    await self._api.patch_namespaced_custom_object_status(
                        GROUP, VERSION, ns, plural, name, {"status": {"conditions": [condition]}},
                        **_MERGE)
                    self.writes += 1
                except ApiException as e:
                    ok = False
                    _log.warning("status_write_failed", object=f"{kind} {ns}/{name}",
                                 status=e.status, reason=e.reason,
                                 fix="grant the controller patch on <plural>/status "
                                     "(daemonset/base/rbac.yaml)" if e.status == 403 else "")
        return ok

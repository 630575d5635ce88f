"""List+watch of one kind into an ObjectCache, the way client-go's reflector does it:
paginated list, then watch from the list's resourceVersion with bookmarks; a dropped
watch resumes from the last resourceVersion seen, a 410 Gone relists, any other
failure backs off (with jitter) and retries. `on_change` is called after every
change to the cache, never while it is half-updated.

The one implementation for every reader: the controller runs one per watched kind,
the node agent one for its node's pods (field selector) and one for namespaces, the
waypoint reconciler one per kind it owns (label selector)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import watch as kwatch
from kubernetes_asyncio.client.exceptions import ApiException

from mesh.backoff import Backoff
from mesh.kube.errors import KubeError, ResourceExpired
from mesh.kube.kinds import WatchedKind
from mesh.kube.store import KubeObject, ObjectCache

_log = structlog.get_logger("mesh.kube.reflector")
PAGE_SIZE = 500


class Reflector:
    def __init__(self, kind: WatchedKind, api: kclient.ApiClient,
                 on_change: Callable[[], None], *, field_selector: str = "",
                 label_selector: str = "", watch_timeout: int = 300, backoff: Backoff | None = None,
                 page_size: int = PAGE_SIZE) -> None:
        self.kind = kind
        self.cache = ObjectCache(kind.kind)
        self._api = api
        self._call = kind.list_call(api)
        self._on_change = on_change
        self._selector: dict[str, str] = {}
        if field_selector:
            self._selector["field_selector"] = field_selector
        if label_selector:
            self._selector["label_selector"] = label_selector
        self._watch_timeout = watch_timeout
        self._page_size = page_size
        self._backoff = backoff or Backoff(initial=0.2, maximum=30.0)
        self.synced = asyncio.Event()
        # Set when an optional kind answered 404 (its CRD is not installed): the cluster
        # then truly has none of it, which is not the same as "not listed yet".
        self.not_served = asyncio.Event()
        self.last_error = ""

    async def run(self) -> None:
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                self._backoff.reset()
            except ResourceExpired as e:
                _log.info("relist", kind=self.kind.kind, reason=str(e))
                need_list = True
            except (TimeoutError, ApiException, aiohttp.ClientError, OSError, KubeError,
                    ValueError) as e:
                self.last_error = _describe(self.kind, e)
                if _missing_crd(self.kind, e):
                    self.not_served.set()
                delay = self._backoff.next_delay()
                level = "debug" if _missing_crd(self.kind, e) else "warning"
                getattr(_log, level)("list_watch_failed", kind=self.kind.kind,
                                     error=self.last_error, retry_in=round(delay, 2))
                await asyncio.sleep(delay)

    async def _list(self) -> None:
        items: list[KubeObject] = []
        token = ""
        while True:
            kwargs: dict[str, Any] = {"limit": self._page_size, **self._selector}
            if token:
                kwargs["_continue"] = token
            try:
                resp = await self._call(_preload_content=False, **kwargs)
                raw = await resp.read()
                resp.release()
                if not 200 <= resp.status <= 299:  # unpreloaded responses are not checked
                    raise ApiException(status=resp.status, reason=_reason(raw, resp.reason))
                body = json.loads(raw)
            except ApiException as e:
                if e.status == 410:  # continue token expired: start the list over
                    items, token = [], ""
                    continue
                raise
            items.extend(self.kind.stamp(o) for o in body.get("items") or [])
            meta = body.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                break
        changed = self.cache.replace(items, str(meta.get("resourceVersion") or ""))
        self.last_error = ""
        _log.info("listed", kind=self.kind.kind, objects=len(items),
                  resource_version=self.cache.resource_version, relists=self.cache.relists)
        self.synced.set()
        if changed:
            self._on_change()

    async def _watch(self) -> None:
        watcher = kwatch.Watch(return_type="object")
        try:
            stream = watcher.stream(
                self._call, resource_version=self.cache.resource_version,
                allow_watch_bookmarks=True, timeout_seconds=self._watch_timeout,
                _request_timeout=self._watch_timeout + 30, **self._selector)
            async for event in stream:
                obj = event["raw_object"]
                if event["type"] != "BOOKMARK" and isinstance(obj, dict):
                    self.kind.stamp(obj)
                if self.cache.apply(event["type"], obj):
                    self._on_change()
        except ApiException as e:
            if e.status == 410:
                raise ResourceExpired(self.kind.kind, self.cache.resource_version) from None
            raise
        finally:
            await watcher.close()


def _reason(raw: bytes, fallback: str | None) -> str:
    """The message of a Kubernetes Status body, else the HTTP reason phrase."""
    try:
        return str(json.loads(raw).get("message") or fallback or "")
    except (ValueError, AttributeError):
        return fallback or ""


def _missing_crd(kind: WatchedKind, e: Exception) -> bool:
    return kind.optional and isinstance(e, ApiException) and e.status == 404


def _describe(kind: WatchedKind, e: Exception) -> str:
    if _missing_crd(kind, e):
        return (f"{kind.plural}.{kind.group} is not served (404): install its CRD "
                "(ambientctl install applies ours; Gateway API CRDs come from "
                "gateway-api's standard-install.yaml)")
    if isinstance(e, ApiException):
        return f"API server answered {e.status} {e.reason}".strip()
    return f"{type(e).__name__}: {e}"

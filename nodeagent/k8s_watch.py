"""List+watch for the node agent in Kubernetes mode: the pods of its own node (field
selector spec.nodeName) and the namespaces (for the dataplane-mode annotation).

The same protocol as the controller's reflector (resourceVersion, bookmarks, resume
after a dropped watch, relist on 410 Gone, backoff) in a small form: the node agent
must not import the controller, and it only ever needs these two kinds."""

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

from mesh.xds.backoff import Backoff

log = structlog.get_logger("nodeagent.k8s")
Key = tuple[str, str]


class _Expired(Exception):
    """410 Gone: relist."""


class KubeWatch:
    """The objects of one kind (optionally field-selected), kept current."""

    def __init__(self, kind: str, list_call: Callable[..., Any], on_change: Callable[[], None],
                 *, field_selector: str = "", watch_timeout: int = 300) -> None:
        self.kind = kind
        self.objects: dict[Key, dict[str, Any]] = {}
        self.resource_version = ""
        self.relists = 0
        self.synced = asyncio.Event()
        self.last_error = ""
        self._call = list_call
        self._on_change = on_change
        self._selector = {"field_selector": field_selector} if field_selector else {}
        self._timeout = watch_timeout
        self._backoff = Backoff(initial=0.2, maximum=30.0)

    async def run(self) -> None:
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                self._backoff.attempt = 0
            except _Expired:
                need_list = True
            except (ApiException, aiohttp.ClientError, OSError, ValueError, TimeoutError) as e:
                self.last_error = f"{type(e).__name__}: {e}"
                delay = self._backoff.next_delay()
                log.warning("watch failed", kind=self.kind, error=self.last_error,
                            retry_in=round(delay, 2))
                await asyncio.sleep(delay)

    async def _list(self) -> None:
        resp = await self._call(_preload_content=False, **self._selector)
        raw = await resp.read()
        resp.release()
        if not 200 <= resp.status <= 299:
            raise ApiException(status=resp.status, reason=resp.reason)
        body = json.loads(raw)
        fresh = {_key(o): o for o in body.get("items") or []}
        changed = fresh != self.objects
        if self.synced.is_set():
            self.relists += 1
        self.objects = fresh
        self.resource_version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        self.last_error = ""
        self.synced.set()
        if changed:
            self._on_change()

    async def _watch(self) -> None:
        watcher = kwatch.Watch(return_type="object")
        try:
            async for event in watcher.stream(
                    self._call, resource_version=self.resource_version,
                    allow_watch_bookmarks=True, timeout_seconds=self._timeout,
                    _request_timeout=self._timeout + 30, **self._selector):
                kind, obj = event["type"], event["raw_object"]
                version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                if version:
                    self.resource_version = version
                if kind == "BOOKMARK":
                    continue
                if kind == "DELETED":
                    self.objects.pop(_key(obj), None)
                else:
                    self.objects[_key(obj)] = obj
                self._on_change()
        except ApiException as e:
            if e.status == 410:
                raise _Expired() from None
            raise
        finally:
            await watcher.close()


def _key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def node_watches(api: kclient.ApiClient, node: str, on_change: Callable[[], None],
                 watch_timeout: int = 300) -> tuple[KubeWatch, KubeWatch]:
    core = kclient.CoreV1Api(api)
    pods = KubeWatch("Pod", core.list_pod_for_all_namespaces, on_change,
                     field_selector=f"spec.nodeName={node}", watch_timeout=watch_timeout)
    namespaces = KubeWatch("Namespace", core.list_namespace, on_change,
                           watch_timeout=watch_timeout)
    return pods, namespaces

"""A fake Kubernetes API server that speaks the real wire protocol, for running the
real client library (kubernetes_asyncio) against it in tests.

What is real: paths (/api/v1/..., /apis/<group>/<version>/...), JSON lists with
metadata.resourceVersion and limit/continue pagination, watches as a chunked stream
of JSON lines (ADDED/MODIFIED/DELETED/BOOKMARK/ERROR) resumed from a resourceVersion,
410 Gone for a compacted resourceVersion (an ERROR event on a watch, an HTTP 410 on a
list continuation), Status objects for errors, create/get/replace/delete, server-side
apply (application/apply-patch+yaml) and merge patches, field and label selectors,
ownerReference garbage collection (switchable), bearer-token authentication and
TokenReview (pod-bound projected tokens carry the pod's name and uid, and stop being
valid with their pod).

Custom resources of the kinds whose CRD is installed (by default the project's own,
daemonset/base/crds) are pruned and validated against its structural schema before
they are stored, through the API and through create/update alike, as a real API
server does (tests/fakes/crd_schema.py): unknown fields dropped (or refused with
`fieldValidation=Strict`), 422 Invalid with the real Status shape.

What is not: admission webhooks, RBAC (every known token may do
everything), protobuf. Tests drive state with create/update/delete/compact/
break_watches/expire_watches and see every request in `requests`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import copy
import datetime as dt
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from aiohttp import web

from tests.fakes import ssa
from tests.fakes.crd_schema import (
    CrdVersion,
    Refused,
    admit,
    crd_versions,
    load_crds,
    patch_refusal,
    spec_changed,
)
from tests.fakes.discovery import discovery, table

Obj = dict[str, Any]


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


TYPES = [
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False),
    ResourceType("", "v1", "pods", "Pod"),
    ResourceType("", "v1", "services", "Service"),
    ResourceType("", "v1", "secrets", "Secret"),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount"),
    ResourceType("", "v1", "nodes", "Node", namespaced=False),
    ResourceType("apps", "v1", "deployments", "Deployment"),
    ResourceType("apps", "v1", "daemonsets", "DaemonSet"),
    ResourceType("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    ResourceType("gateway.networking.k8s.io", "v1", "gatewayclasses", "GatewayClass",
                 namespaced=False),
    ResourceType("gateway.networking.k8s.io", "v1", "gateways", "Gateway"),
    ResourceType("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
    ResourceType("ambientmesh.io", "v1alpha1", "peerauthentications", "PeerAuthentication"),
    ResourceType("ambientmesh.io", "v1alpha1", "authorizationpolicies", "AuthorizationPolicy"),
    ResourceType("ambientmesh.io", "v1alpha1", "trafficpolicies", "TrafficPolicy"),
]
BY_KIND = {t.kind: t for t in TYPES}
BY_PATH = {(t.group, t.version, t.plural): t for t in TYPES}


# The audience a real API server gives tokens that name none (its --api-audiences).
API_SERVER_AUDIENCE = "https://kubernetes.default.svc.cluster.local"


def status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {},
                              "status": "Failure", "message": message, "reason": reason,
                              "code": code}, status=code)


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def _merge(base: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386), which is also how we treat apply patches."""
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    out = dict(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(base.get(k), v)
    return out


def _field(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def _selected(obj: Obj, fields: str, labels: str) -> bool:
    for term in filter(None, fields.split(",")):
        neg = "!=" in term
        key, _, value = term.partition("!=" if neg else "=")
        value = value.lstrip("=")
        if (_field(obj, key) == value) == neg:
            return False
    have = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, labels.split(",")):
        if "!=" in term:
            k, _, v = term.partition("!=")
            if have.get(k) == v:
                return False
        elif "=" in term:
            k, _, v = term.partition("=")
            if have.get(k) != v.lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in have:
                return False
        elif term not in have:
            return False
    return True


@dataclass(eq=False)
class _Watch:
    rtype: ResourceType
    namespace: str
    fields: str
    labels: str
    queue: asyncio.Queue[Obj | None] = field(default_factory=asyncio.Queue)


# The fieldValidation of the request being served, and the warnings it collects.
_FIELD_VALIDATION: contextvars.ContextVar[str] = contextvars.ContextVar(
    "field_validation", default="Warn")
_WARNINGS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "warnings", default=None)
# "status" while serving a write to a custom resource's status subresource.
_SUBRESOURCE: contextvars.ContextVar[str] = contextvars.ContextVar("subresource", default="")


class FakeApiServer:
    def __init__(self, *, token: str = "test-admin-token", bookmark_interval: float = 0.2,
                 garbage_collect: bool = True, crds: list[CrdVersion] | None = None) -> None:
        self.token = token
        # Schemas custom resources are pruned and validated with (kind -> served version).
        self.crds: dict[str, CrdVersion] = {
            c.kind: c for c in (load_crds() if crds is None else crds)}
        # False: owners' deletion leaves dependents, as with the kube-controller-manager
        # down (tests of controllers that must clean up after themselves).
        self.garbage_collect = garbage_collect
        # Plurals whose writes are refused with 503 (an API server under pressure).
        self.refuse_writes: set[str] = set()
        self.bookmark_interval = bookmark_interval
        self.rv = 100
        self.compacted = 0
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {t.plural: {} for t in TYPES}
        self.history: list[tuple[int, str, str, Obj]] = []
        self.reviews: dict[str, Obj] = {}
        self.reviewed: list[str] = []  # every token a TokenReview asked about, in order
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._watches: set[_Watch] = set()
        self._continues: dict[str, tuple[int, list[Obj]]] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ---- lifecycle ------------------------------------------------------------------
    async def start(self, ssl_context: ssl.SSLContext | None = None) -> str:
        """Serve on a free port: plain HTTP, or HTTPS with `ssl_context` (kubectl sends
        no bearer token over plain HTTP)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._admission_dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop serving. Bounded: after a test failed halfway a watch handler can outlive
        its client, and a teardown that never ends would hold the whole test run."""
        self.break_watches()
        if self._runner is not None:
            cleanup = asyncio.ensure_future(self._runner.cleanup())
            _, pending = await asyncio.wait({cleanup}, timeout=10)
            for task in pending:
                task.cancel()

    # ---- state changes tests make ----------------------------------------------------
    def _rtype(self, obj: Obj) -> ResourceType:
        return BY_KIND[obj["kind"]]

    def _record(self, rtype: ResourceType, event: str, obj: Obj, old: Obj | None = None
                ) -> None:
        """Tell matching watches. As the real watch cache does, an update that makes an
        object stop matching a watch's selector is a DELETED event for that watch, and
        one that makes it start matching an ADDED event."""
        self.history.append((self.rv, rtype.plural, event, copy.deepcopy(obj)))
        for w in list(self._watches):
            if w.rtype != rtype or (w.namespace and w.namespace !=
                                    obj["metadata"].get("namespace")):
                continue
            now = _selected(obj, w.fields, w.labels)
            before = old is not None and _selected(old, w.fields, w.labels)
            if now:
                kind = "ADDED" if old is not None and not before else event
                w.queue.put_nowait({"type": kind, "object": copy.deepcopy(obj)})
            elif before:
                w.queue.put_nowait({"type": "DELETED", "object": copy.deepcopy(obj)})

    def install_crd(self, crd: Obj) -> None:
        """Install or replace a CRD (objects already stored are not re-validated)."""
        for version in crd_versions(crd):
            self.crds[version.kind] = version

    def _admit(self, rtype: ResourceType, obj: Obj, old: Obj | None = None) -> Obj:
        """The object as stored: pruned and validated when its kind has a CRD schema
        (errors in parts an update leaves unchanged are ratcheted); raises Refused (the
        Status a real API server answers) when invalid. With a status subresource, a
        write to the object keeps the stored status and a write to `.../status` changes
        only the status; metadata.generation moves on spec changes only."""
        crd = self.crds.get(rtype.kind)
        if crd is None:
            return obj
        if crd.status_subresource:
            if old is not None and _SUBRESOURCE.get() == "status":
                obj = {**copy.deepcopy(old), "status": obj.get("status")}
            else:
                obj["status"] = copy.deepcopy((old or {}).get("status"))
            if obj["status"] is None:
                del obj["status"]
        stored, warnings = admit(crd, obj, _FIELD_VALIDATION.get(), old)
        collected = _WARNINGS.get()
        if collected is not None:
            collected.extend(warnings)
        generation = int(((old or {}).get("metadata") or {}).get("generation") or 0)
        stored.setdefault("metadata", {})["generation"] = (
            generation + 1 if old is None or spec_changed(stored, old) else generation)
        return stored

    def create(self, obj: Obj) -> Obj:
        rtype = self._rtype(obj)
        obj = self._admit(rtype, copy.deepcopy(obj))
        meta = obj.setdefault("metadata", {})
        if rtype.namespaced:
            meta.setdefault("namespace", "default")
        key = (meta.get("namespace", ""), meta["name"])
        if key in self.objects[rtype.plural]:
            raise KeyError(f"{rtype.kind} {key} exists")
        self.rv += 1
        meta.update(uid=meta.get("uid") or str(uuid.uuid4()), resourceVersion=str(self.rv),
                    creationTimestamp=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        obj.setdefault("apiVersion", rtype.api_version)
        self.objects[rtype.plural][key] = obj
        self._record(rtype, "ADDED", obj)
        return obj

    def update(self, obj: Obj) -> Obj:
        rtype = self._rtype(obj)
        meta = obj["metadata"]
        key = (meta.get("namespace", "default" if rtype.namespaced else ""), meta["name"])
        old = self.objects[rtype.plural][key]
        new = self._admit(rtype, copy.deepcopy(obj), old)
        self.rv += 1
        new["metadata"].update(uid=old["metadata"]["uid"], resourceVersion=str(self.rv),
                               creationTimestamp=old["metadata"]["creationTimestamp"])
        if rtype.namespaced:
            new["metadata"].setdefault("namespace", key[0])
        self.objects[rtype.plural][key] = new
        self._record(rtype, "MODIFIED", new, old)
        return new

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.objects[BY_KIND[kind].plural].get((namespace, name))

    def delete(self, kind: str, namespace: str, name: str) -> Obj | None:
        rtype = BY_KIND[kind]
        obj = self.objects[rtype.plural].pop((namespace, name), None)
        if obj is None:
            return None
        self.rv += 1
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._record(rtype, "DELETED", gone)
        uid = obj["metadata"]["uid"]
        if not self.garbage_collect:
            return gone
        for t in TYPES:  # the garbage collector: dependents go with their owner
            for (ns, n), dep in list(self.objects[t.plural].items()):
                if any(r.get("uid") == uid for r in dep["metadata"].get("ownerReferences") or []):
                    self.delete(t.kind, ns, n)
        return gone

    def compact(self) -> None:
        """Forget history: watches and continuations from older versions get 410."""
        self.compacted = self.rv
        self.history.clear()

    def break_watches(self) -> None:
        """Drop every open watch connection, as an API server restart would."""
        for w in list(self._watches):
            w.queue.put_nowait(None)

    def expire_watches(self) -> None:
        """Tell every open watch its resourceVersion is too old (410 in the stream)."""
        self.compact()
        for w in list(self._watches):
            w.queue.put_nowait({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410}})

    def add_token(self, token: str, username: str, *, extra: dict[str, list[str]] | None = None,
                  audiences: list[str] | None = None) -> None:
        self.reviews[token] = {"username": username, "uid": str(uuid.uuid4()),
                               "groups": ["system:serviceaccounts", "system:authenticated"],
                               "extra": extra or {}, "audiences": audiences or []}

    def add_pod_token(self, token: str, pod: Obj, *, audiences: list[str] | None = None,
                      node_info: bool = False) -> str:
        """A projected service-account token of `pod`, as the kubelet mounts it: its user
        is the pod's service account, its extra fields bind it to the pod's name and
        uid (and, with `node_info`, its node, as API servers >= 1.30 add). As a real API
        server does, TokenReview refuses it once that pod is gone or replaced."""
        meta, spec = pod["metadata"], pod.get("spec") or {}
        namespace = meta.get("namespace", "default")
        extra = {"authentication.kubernetes.io/pod-name": [meta["name"]],
                 "authentication.kubernetes.io/pod-uid": [meta["uid"]]}
        if node_info and spec.get("nodeName"):
            extra["authentication.kubernetes.io/node-name"] = [spec["nodeName"]]
        sa = spec.get("serviceAccountName") or "default"
        self.add_token(token, f"system:serviceaccount:{namespace}:{sa}", extra=extra,
                       audiences=audiences if audiences is not None else ["ambient-mesh"])
        self.reviews[token]["boundPod"] = (namespace, meta["name"], meta["uid"])
        return token

    def _bound_pod_error(self, known: Obj) -> str:
        """Why a pod-bound token is no longer valid ("" while its pod lives)."""
        bound = known.get("boundPod")
        if bound is None:
            return ""
        namespace, name, uid = bound
        pod = self.objects["pods"].get((namespace, name))
        if pod is None:
            return f'pods "{name}" not found'
        if pod["metadata"]["uid"] != uid:
            return (f'pod "{namespace}/{name}" uid {pod["metadata"]["uid"]} does not match '
                    f"the token's {uid}")
        return ""

    def watch_count(self, kind: str | None = None) -> int:
        return sum(1 for w in self._watches if kind is None or w.rtype.kind == kind)

    # ---- HTTP ---------------------------------------------------------------------------
    async def _admission_dispatch(self, request: web.Request) -> web.StreamResponse:
        """Serve one request with its fieldValidation; writes refused at admission get
        their Status, fields dropped under Warn a `Warning` header each."""
        _FIELD_VALIDATION.set(request.query.get("fieldValidation") or "Warn")
        warnings: list[str] = []
        _WARNINGS.set(warnings)
        segs = [s for s in request.path.split("/") if s]
        crd = next((c for c in self.crds.values() if c.plural in segs[-3:-1]), None)
        _SUBRESOURCE.set("status" if crd is not None and segs[-1:] == ["status"]
                         and segs[-3:-2] == [crd.plural] else "")
        try:
            if crd is not None and request.method == "PATCH":
                refusal = patch_refusal(request.headers.get("Content-Type", ""),
                                        await request.text())
                if refusal is not None:
                    raise refusal
            response = await self._dispatch(request)
        except Refused as e:
            response = web.json_response(e.status, status=e.code)
            warnings.extend(e.warnings)
        if warnings and not response.prepared:
            for w in warnings:
                response.headers.add("Warning", f"299 - {json.dumps(w)}")
        return response

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.query)))
        if request.headers.get("Authorization", "") != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        segs = [s for s in request.path.split("/") if s]
        document = discovery(request.path, TYPES) if request.method == "GET" else None
        if document is not None:
            return web.json_response(document)
        if segs[:1] == ["apis"] and segs[1:4] == ["authentication.k8s.io", "v1", "tokenreviews"]:
            return await self._token_review(request)
        if (request.method == "POST" and len(segs) == 7 and segs[:3] == ["api", "v1",
                "namespaces"] and segs[4] == "serviceaccounts" and segs[6] == "token"):
            return await self._token_request(request, segs[3], segs[5])
        try:
            rtype, namespace, name = self._route(segs)
        except KeyError as e:
            return status(404, "NotFound", f"the server could not find the requested resource "
                                           f"({e})")
        if request.method != "GET" and rtype.plural in self.refuse_writes:
            return status(503, "ServiceUnavailable", f"writes to {rtype.plural} are refused "
                                                     "for now (test)")
        if request.method == "GET" and name is None:
            if _truthy(request.query.get("watch")):
                return await self._watch(request, rtype, namespace)
            return self._list(request, rtype, namespace)
        if request.method == "GET":
            obj = self.objects[rtype.plural].get((namespace, name or ""))
            return web.json_response(obj) if obj else status(
                404, "NotFound", f'{rtype.plural} "{name}" not found')
        if request.method == "POST":
            body = await request.json()
            body.setdefault("metadata", {})
            if rtype.namespaced:
                body["metadata"]["namespace"] = namespace
            body = ssa.update(None, {**body, "kind": rtype.kind}, rtype.kind,
                              request.query.get("fieldManager") or _default_manager(request),
                              rtype.api_version)
            invalid = _invalid(rtype, str(body["metadata"].get("name")), body)
            if invalid is not None:
                return invalid
            try:
                return web.json_response(self.create(body), status=201)
            except KeyError:
                return status(409, "AlreadyExists",
                              f'{rtype.plural} "{body["metadata"]["name"]}" already exists')
        if request.method in ("PUT", "PATCH") and name is not None:
            return await self._write(request, rtype, namespace, name)
        if request.method == "DELETE" and name is not None:
            gone = self.delete(rtype.kind, namespace, name)
            return web.json_response(gone) if gone else status(
                404, "NotFound", f'{rtype.plural} "{name}" not found')
        return status(405, "MethodNotAllowed", f"{request.method} is not supported here")

    def _route(self, segs: list[str]) -> tuple[ResourceType, str, str | None]:
        if segs[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", segs[2:]
        elif segs[:1] == ["apis"] and len(segs) >= 4:
            group, version, rest = segs[1], segs[2], segs[3:]
        else:
            raise KeyError("/".join(segs))
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        rtype = BY_PATH[(group, version, rest[0])]
        return rtype, namespace, rest[1] if len(rest) > 1 else None

    def _matching(self, rtype: ResourceType, namespace: str, query: Any) -> list[Obj]:
        fields, labels = query.get("fieldSelector", ""), query.get("labelSelector", "")
        return [copy.deepcopy(o) for k, o in sorted(self.objects[rtype.plural].items())
                if (not namespace or k[0] == namespace) and _selected(o, fields, labels)]

    def _list(self, request: web.Request, rtype: ResourceType, namespace: str) -> web.Response:
        token = request.query.get("continue", "")
        if token:
            saved = self._continues.pop(token, None)
            if saved is None or saved[0] < self.compacted:
                return status(410, "Expired", "The provided continue parameter is too old to "
                                              "display a consistent list result.")
            list_rv, items = saved
        else:
            list_rv, items = self.rv, self._matching(rtype, namespace, request.query)
        limit = int(request.query.get("limit") or 0)
        meta: Obj = {"resourceVersion": str(list_rv)}
        if limit and len(items) > limit:
            items, rest = items[:limit], items[limit:]
            nxt = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()
            self._continues[nxt] = (list_rv, rest)
            meta["continue"] = nxt
            meta["remainingItemCount"] = len(rest)
        for item in items:  # built-in types' list items carry no kind/apiVersion
            if rtype.kind not in self.crds:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        listing = {"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version,
                   "metadata": meta, "items": items}
        if "as=Table" in request.headers.get("Accept", ""):  # kubectl get: server printing
            return web.json_response(table(rtype.kind, listing))
        return web.json_response(listing)

    async def _watch(self, request: web.Request, rtype: ResourceType, namespace: str
                     ) -> web.StreamResponse:
        q = request.query
        since = q.get("resourceVersion", "")
        w = _Watch(rtype, namespace, q.get("fieldSelector", ""), q.get("labelSelector", ""))
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        timeout = float(q.get("timeoutSeconds") or 3600)
        bookmarks = _truthy(q.get("allowWatchBookmarks"))
        if since and since != "0" and int(since) < self.compacted:
            await self._send(resp, {"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": f"too old resource version: {since} ({self.compacted})",
                "reason": "Expired", "code": 410}})
            return resp
        if not since or since == "0":
            backlog = [{"type": "ADDED", "object": o}
                       for o in self._matching(rtype, namespace, q)]
        else:
            backlog = [{"type": ev, "object": copy.deepcopy(o)} for rv, plural, ev, o
                       in self.history if rv > int(since) and plural == rtype.plural
                       and (not namespace or o["metadata"].get("namespace") == namespace)
                       and _selected(o, w.fields, w.labels)]
        self._watches.add(w)
        try:
            for event in backlog:
                await self._send(resp, event)
            async for event in self._events(w, timeout, bookmarks):
                await self._send(resp, event)
                if event["type"] == "ERROR":
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watches.discard(w)
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp

    async def _events(self, w: _Watch, timeout: float, bookmarks: bool) -> AsyncIterator[Obj]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            wait = min(deadline - loop.time(), self.bookmark_interval)
            try:
                event = await asyncio.wait_for(w.queue.get(), timeout=wait)
            except TimeoutError:
                if bookmarks and w.queue.empty():
                    yield {"type": "BOOKMARK", "object": {
                        "kind": w.rtype.kind, "apiVersion": w.rtype.api_version,
                        "metadata": {"resourceVersion": str(self.rv)}}}
                continue
            if event is None:
                return
            yield event

    @staticmethod
    async def _send(resp: web.StreamResponse, event: Obj) -> None:
        await resp.write(json.dumps(event).encode() + b"\n")

    async def _write(self, request: web.Request, rtype: ResourceType, namespace: str,
                     name: str) -> web.Response:
        ctype = request.headers.get("Content-Type", "")
        raw = await request.text()
        body = yaml.safe_load(raw) if "apply-patch" in ctype else json.loads(raw)
        current = self.objects[rtype.plural].get((namespace, name))
        manager = request.query.get("fieldManager") or _default_manager(request)
        if "apply-patch" in ctype:
            return self._server_side_apply(request, rtype, namespace, name, body, current)
        if request.method == "PUT":
            if current is None:
                return status(404, "NotFound", f'{rtype.plural} "{name}" not found')
            merged = body
        elif current is None:
            return status(404, "NotFound", f'{rtype.plural} "{name}" not found')
        elif "json-patch" in ctype and isinstance(body, list):
            merged = ssa.json_patch(current, body)
        else:
            merged = _merge(current, body)
        if _SUBRESOURCE.get() != "status":
            merged = ssa.update(current, merged, rtype.kind, manager, rtype.api_version)
        invalid = _invalid(rtype, name, merged)
        if invalid is not None:
            return invalid
        merged["kind"] = rtype.kind
        merged.setdefault("metadata", {}).update(name=name)
        if rtype.namespaced:
            merged["metadata"]["namespace"] = namespace
        if current is not None and _strip(merged) == _strip(current):
            return web.json_response(current)  # no-op writes do not bump the version
        return web.json_response(self.update(merged))

    def _server_side_apply(self, request: web.Request, rtype: ResourceType, namespace: str,
                           name: str, body: Obj, current: Obj | None) -> web.Response:
        """An apply patch: merged by field ownership (tests/fakes/ssa.py), conflicts
        409 unless forced, then validated like any write."""
        manager = request.query.get("fieldManager") or ""
        if not manager:
            return status(422, "Invalid", 'PatchOptions.meta.k8s.io "" is invalid: '
                          "fieldManager: Required value: is required for apply patch")
        body = {**body, "kind": rtype.kind}
        body.setdefault("metadata", {}).update(name=name)
        if rtype.namespaced:
            body["metadata"]["namespace"] = namespace
        try:
            merged = ssa.apply(copy.deepcopy(current) if current else None, body, rtype.kind,
                               manager, force=_truthy(request.query.get("force")),
                               api_version=rtype.api_version)
        except ssa.ApplyConflict as e:
            return web.json_response(e.status(), status=409)
        invalid = _invalid(rtype, name, merged)
        if invalid is not None:
            return invalid
        merged["kind"] = rtype.kind
        if current is None:
            return web.json_response(self.create(merged), status=201)
        if _strip(merged) == _strip(current):
            return web.json_response(current)
        return web.json_response(self.update(merged))

    async def _token_request(self, request: web.Request, namespace: str, account: str
                             ) -> web.Response:
        """TokenRequest (`kubectl create token`): a token of an existing ServiceAccount,
        for the requested audiences (default: the API server's own), at least 10
        minutes, optionally bound to a Pod (then TokenReview names the pod and refuses
        the token once that pod is gone), as the real API server answers it."""
        if (namespace, account) not in self.objects["serviceaccounts"]:
            return status(404, "NotFound", f'serviceaccounts "{account}" not found')
        body = await request.json()
        spec = body.get("spec") or {}
        seconds = int(spec.get("expirationSeconds") or 3600)
        if seconds < 600:
            return status(422, "Invalid", "TokenRequest.authentication.k8s.io "
                          f'"{account}" is invalid: spec.expirationSeconds: Invalid value: '
                          f"{seconds}: may not specify a duration less than 10 minutes")
        audiences = list(spec.get("audiences") or [API_SERVER_AUDIENCE])
        token = f"tr-{uuid.uuid4().hex}"
        ref = spec.get("boundObjectRef") or {}
        if ref.get("kind") == "Pod":
            pod = self.objects["pods"].get((namespace, ref.get("name", "")))
            if pod is None:
                return status(404, "NotFound", f'pods "{ref.get("name", "")}" not found')
            if ref.get("uid") and ref["uid"] != pod["metadata"]["uid"]:
                return status(409, "Conflict", f'the UID in the bound object reference '
                              f'({ref["uid"]}) does not match the UID in record. The object '
                              "might have been deleted and then recreated")
            self.add_pod_token(token, {**pod, "spec": {**(pod.get("spec") or {}),
                                                       "serviceAccountName": account}},
                               audiences=audiences)
        else:
            self.add_token(token, f"system:serviceaccount:{namespace}:{account}",
                           audiences=audiences)
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
        return web.json_response({
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": account, "namespace": namespace,
                         "creationTimestamp": None},
            "spec": {"audiences": audiences, "expirationSeconds": seconds,
                     "boundObjectRef": ref or None},
            "status": {"token": token,
                       "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}},
            status=201)

    async def _token_review(self, request: web.Request) -> web.Response:
        body = await request.json()
        spec = body.get("spec") or {}
        self.reviewed.append(str(spec.get("token", "")))
        known = self.reviews.get(spec.get("token", ""))
        wanted = spec.get("audiences") or []
        if known is None:
            result: Obj = {"authenticated": False, "error": "invalid bearer token"}
        elif wanted and known["audiences"] and not set(wanted) & set(known["audiences"]):
            result = {"authenticated": False,
                      "error": "token audiences do not match the requested audiences"}
        elif self._bound_pod_error(known):
            result = {"authenticated": False,
                      "error": f"[invalid bearer token, {self._bound_pod_error(known)}]"}
        else:
            user = {k: v for k, v in known.items() if k not in ("audiences", "boundPod")}
            result = {"authenticated": True, "user": user,
                      "audiences": wanted or known["audiences"]}
        return web.json_response({"kind": "TokenReview",
                                  "apiVersion": "authentication.k8s.io/v1",
                                  "metadata": {"creationTimestamp": None}, "spec": spec,
                                  "status": result}, status=201)


def _default_manager(request: web.Request) -> str:
    """The real server's default field manager: the User-Agent up to its first '/'."""
    return request.headers.get("User-Agent", "unknown").split("/")[0] or "unknown"


def _invalid(rtype: ResourceType, name: str, obj: Obj) -> web.Response | None:
    """The real server's 422 for duplicate port names (Service and container ports) and
    containers without an image."""
    causes = [{"reason": "FieldValueDuplicate", "message": f"Duplicate value: {json.dumps(v)}",
               "field": f} for f, v in ssa.duplicate_port_names(obj, rtype.kind)]
    causes += [{"reason": "FieldValueRequired", "message": "Required value", "field": f}
               for f in ssa.missing_images(obj, rtype.kind)]
    if not causes:
        return None
    kind = f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind
    detail = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    message = (f'{kind} "{name}" is invalid: '
               + (detail if len(causes) == 1 else f"[{detail}]"))
    return web.json_response(
        {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
         "message": message, "reason": "Invalid",
         "details": {"name": name, "group": rtype.group, "kind": rtype.kind,
                     "causes": causes}, "code": 422}, status=422)


def _strip(obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    for k in ("resourceVersion", "uid", "creationTimestamp"):
        out.get("metadata", {}).pop(k, None)
    return out

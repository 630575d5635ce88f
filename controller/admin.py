"""The admin HTTP API (JSON) used by ambientctl: status, objects, apply, delete,
config dump, Prometheus metrics.

Reads are open from loopback; from anywhere else, and for every write, the caller
must present `Authorization: Bearer <admin token>` (the token is in the state dir)."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from google.protobuf.json_format import MessageToDict

from controller.configdir import keys_from_yaml
from mesh.config import ConfigError, ObjectKey, resolve_kind
from mesh.config.kinds import KINDS

if TYPE_CHECKING:
    from controller.app import Controller

_log = structlog.get_logger("controller.admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CONTROLLER_KEY: web.AppKey[Controller] = web.AppKey("controller")


def _is_loopback(request: web.Request) -> bool:
    remote = request.remote or ""
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return remote.startswith("unix") or remote == ""


def _authorized(request: web.Request) -> bool:
    token = request.app[CONTROLLER_KEY].admin_token
    header = request.headers.get("Authorization", "")
    given = header[len("Bearer "):].strip() if header.startswith("Bearer ") else ""
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    write = request.method not in ("GET", "HEAD")
    if (write or not _is_loopback(request)) and not _authorized(request):
        return _error(401, "this request needs 'Authorization: Bearer <admin token>' (the "
                           "token is in <state-dir>/admin.token)")
    return await handler(request)


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROLLER_KEY].status())


async def objects(request: web.Request) -> web.Response:
    c = request.app[CONTROLLER_KEY]
    kind_q = request.query.get("kind", "")
    ns = request.query.get("namespace", "")
    name = request.query.get("name", "")
    if kind_q.lower() in ("node", "nodes", "no"):
        items = [n for n in c.node_objects() if not name or n["metadata"]["name"] == name]
        return web.json_response({"apiVersion": "v1", "kind": "List", "items": items})
    try:
        kinds = [resolve_kind(kind_q).KIND] if kind_q else sorted(KINDS)
    except KeyError as e:
        return _error(400, str(e.args[0]))
    items = []
    for kind in kinds:
        for obj in c.list_objects(kind):
            meta = obj.get("metadata", {})
            if ns and meta.get("namespace", "") not in (ns, ""):
                continue
            if name and meta.get("name") != name:
                continue
            items.append(obj)
    return web.json_response({"apiVersion": "v1", "kind": "List", "items": items})


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


def _refused(e: ConfigError) -> web.Response:
    return _error(422, str(e), issues=[i.as_dict() for i in e.issues])


async def apply(request: web.Request) -> web.Response:
    body = await _body(request)
    text, source = body.get("yaml"), body.get("file") or "applied.yaml"
    if not isinstance(text, str) or not isinstance(source, str):
        return _error(400, "body needs 'yaml' (text) and 'file' (source file name)")
    try:
        changes = request.app[CONTROLLER_KEY].apply(text, source)
    except ConfigError as e:
        return _refused(e)
    return web.json_response({"results": [ch.as_dict() for ch in changes]})


async def delete(request: web.Request) -> web.Response:
    body = await _body(request)
    c = request.app[CONTROLLER_KEY]
    try:
        if isinstance(body.get("yaml"), str):
            keys = keys_from_yaml(body["yaml"], str(body.get("file") or "deleted.yaml"))
        else:
            keys = []
            for item in body.get("objects") or []:
                cls = resolve_kind(str(item.get("kind", "")))
                ns = (item.get("namespace") or "default") if cls.NAMESPACED else ""
                keys.append(ObjectKey(cls.KIND, ns, str(item.get("name", ""))))
    except ConfigError as e:
        return _refused(e)
    except KeyError as e:
        return _error(400, str(e.args[0]))
    changes = c.delete(keys)
    code = 404 if changes and all(ch.action == "not found" for ch in changes) else 200
    return web.json_response({"results": [ch.as_dict() for ch in changes]}, status=code)


async def config_dump(request: web.Request) -> web.Response:
    c = request.app[CONTROLLER_KEY]
    name = request.match_info["name"]
    found = c.config_dump(name)
    if found is None:
        return _error(404, f"no node or waypoint named {name!r} (nodes: "
                           f"{', '.join(sorted(c.registry.nodes)) or 'none'}; waypoints: "
                           f"{', '.join(f'{a}/{b}' for a, b in c.registry.view().waypoints)}"
                           " )")
    record, snapshot = found
    return web.json_response({
        "proxy": record,
        "snapshot": MessageToDict(snapshot, preserving_proto_field_name=False),
    })


async def metrics(request: web.Request) -> web.Response:
    body = request.app[CONTROLLER_KEY].metrics.render()
    return web.Response(body=body, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type": "version=0.0.4"})


def build_app(controller: Controller) -> web.Application:
    app = web.Application(middlewares=[_auth], client_max_size=64 * 1024 * 1024)
    app[CONTROLLER_KEY] = controller
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/objects", objects)
    app.router.add_post("/v1/apply", apply)
    app.router.add_post("/v1/delete", delete)
    app.router.add_get("/v1/config_dump/{name:.+}", config_dump)
    app.router.add_get("/metrics", metrics)
    return app


"""Client of the controller's admin HTTP API (JSON on 127.0.0.1:15014 by default).

Reads are open; writes carry the bearer token from the controller's state directory.
Every failure becomes an AmbientctlError a user can act on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from ambientctl.errors import ControllerRefused, ControllerUnreachable


class AdminClient:
    def __init__(self, address: str, token_file: Path | None = None, log_file: str = "",
                 timeout: float = 10.0) -> None:
        self.address = address
        self.token_file = token_file
        self.log_file = log_file
        self._http = httpx.Client(base_url=f"http://{address}", timeout=timeout, trust_env=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transport ---------------------------------------------------------------
    def _headers(self, write: bool) -> dict[str, str]:
        if not write or self.token_file is None:
            return {}
        try:
            token = self.token_file.read_text().strip()
        except FileNotFoundError:
            raise ControllerRefused(
                f"the admin token {self.token_file} does not exist",
                "writes need the token the controller creates at start: is the mesh up?",
            ) from None
        except PermissionError:
            raise ControllerRefused(
                f"cannot read the admin token {self.token_file}",
                "it is readable by root only: run the command with sudo") from None
        return {"Authorization": f"Bearer {token}"}

    def request(self, method: str, path: str, *, write: bool = False,
                params: dict[str, str] | None = None, json_body: Any = None,
                allow_404: bool = False) -> httpx.Response:
        headers = self._headers(write)
        try:
            resp = self._http.request(method, path, params=params, json=json_body,
                                      headers=headers)
        except httpx.TransportError as e:
            raise ControllerUnreachable(self.address, _describe(e), self.log_file) from None
        if resp.status_code >= 400 and not (allow_404 and resp.status_code == 404):
            raise ControllerRefused(_error_text(resp), _error_hint(resp))
        return resp

    def get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self.request("GET", path, params=params).json()

    # ---- API ---------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        data = self.get_json("/v1/status")
        return data if isinstance(data, dict) else {}

    def list_objects(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        params = {"kind": kind}
        if namespace:
            params["namespace"] = namespace
        data = self.get_json("/v1/objects", params)
        items = data.get("items", []) if isinstance(data, dict) else data
        return [i for i in items if isinstance(i, dict)]

    def apply(self, yaml_text: str, filename: str) -> list[dict[str, Any]]:
        """Results per object: {kind, namespace, name, action}."""
        resp = self.request("POST", "/v1/apply", write=True,
                            json_body={"yaml": yaml_text, "file": filename})
        return _results(resp)

    def delete_yaml(self, yaml_text: str, filename: str) -> list[dict[str, Any]]:
        resp = self.request("POST", "/v1/delete", write=True, allow_404=True,
                            json_body={"yaml": yaml_text, "file": filename})
        return _results(resp)

    def delete_objects(self, objects: list[dict[str, str]]) -> list[dict[str, Any]]:
        resp = self.request("POST", "/v1/delete", write=True, allow_404=True,
                            json_body={"objects": objects})
        return _results(resp)

    def config_dump(self, proxy: str) -> dict[str, Any]:
        data = self.get_json(f"/v1/config_dump/{proxy}")
        return data if isinstance(data, dict) else {"snapshot": data}

    def metrics(self) -> str:
        return self.request("GET", "/metrics").text


def _describe(e: httpx.TransportError) -> str:
    if isinstance(e, httpx.ConnectError):
        return "connection refused (is the controller running?)"
    if isinstance(e, httpx.TimeoutException):
        return "timed out"
    return str(e) or type(e).__name__


def _results(resp: httpx.Response) -> list[dict[str, Any]]:
    try:
        data = resp.json()
    except ValueError:
        return []
    results = data.get("results", []) if isinstance(data, dict) else []
    return [r for r in results if isinstance(r, dict)]


def _error_text(resp: httpx.Response) -> str:
    """The controller's own words: JSON {error|message, issues[]} or plain text."""
    try:
        data = resp.json()
    except ValueError:
        text = resp.text.strip()
        return text or f"controller answered HTTP {resp.status_code}"
    if not isinstance(data, dict):
        return str(data)
    issues = data.get("issues") or []
    lines = [i.get("message") or str(i) if isinstance(i, dict) else str(i) for i in issues]
    head = str(data.get("error") or data.get("message") or f"HTTP {resp.status_code}")
    if lines:
        return head + ("\n  " if head else "") + "\n  ".join(lines)
    return head


def _error_hint(resp: httpx.Response) -> str:
    if resp.status_code in (401, 403):
        return "writes need the admin token of the running mesh: run with sudo"
    if resp.status_code == 404:
        return "check the name and namespace with `ambientctl get`"
    if resp.status_code in (400, 422):
        return "fix the named field and apply again; nothing from this request was applied"
    return ""

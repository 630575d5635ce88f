"""The Kubernetes API client every part builds the same way (controller, node agent,
`ambientctl status --kubeconfig`).

A kubeconfig user may keep its token in a file (`tokenFile`). kubernetes_asyncio
reads it once and sends it as is, so a file ending with a newline (`echo TOKEN >
file`, `kubectl create token ... > file`) became a header aiohttp refuses ("Forbidden
control character") and the process died. Here the file is read as kubectl reads
it: surrounding whitespace stripped, a control character inside refused with the
file's name, and read again every minute so a rotated token is used (the last good
token stays in use while a rewrite is unreadable)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import structlog
import yaml
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig

from mesh.kube.errors import KubeError

_log = structlog.get_logger("mesh.kube.client")
TOKEN_REFRESH_SECONDS = 60.0  # as client-go's cached token file source


class KubeconfigTokenError(KubeError):
    """A kubeconfig `tokenFile` holds no usable bearer token; the message names it."""


async def api_client(kubeconfig: Path | None, *,
                     token_refresh_seconds: float = TOKEN_REFRESH_SECONDS
                     ) -> kclient.ApiClient:
    """From a kubeconfig file, or the pod's service account when running in-cluster."""
    configuration = kclient.Configuration()
    if kubeconfig is not None:
        try:
            await kconfig.load_kube_config(config_file=str(kubeconfig),
                                           client_configuration=configuration)
        except kconfig.ConfigException as e:
            raise KubeError(f"kubeconfig {kubeconfig}: {e}") from None
        token_file = kubeconfig_token_file(kubeconfig)
        if token_file is not None:
            _use_token_file(configuration, token_file, token_refresh_seconds)
    else:
        try:
            kconfig.load_incluster_config(client_configuration=configuration)
        except kconfig.ConfigException as e:
            raise KubeError(f"no kubeconfig given and not running in a pod ({e}); pass "
                            "--kubeconfig") from None
    return kclient.ApiClient(configuration)


def read_token_file(path: Path) -> str:
    """The bearer token in `path`, without surrounding whitespace."""
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise KubeconfigTokenError(f"cannot read the kubeconfig tokenFile {path}: "
                                   f"{getattr(e, 'strerror', None) or e}") from None
    if not token:
        raise KubeconfigTokenError(f"the kubeconfig tokenFile {path} is empty; write the "
                                   "service-account token into it")
    bad = next((c for c in token if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise KubeconfigTokenError(
            f"the kubeconfig tokenFile {path} has a control character (0x{ord(bad):02x}) "
            "inside its token; a bearer token is one line of printable characters: write "
            "only the token into the file")
    return token


def kubeconfig_token_file(kubeconfig: Path) -> Path | None:
    """The current context's user's `tokenFile` (relative to the kubeconfig's
    directory), or None if it has none."""
    try:
        doc = yaml.safe_load(kubeconfig.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None  # load_kube_config has already said what is wrong with the file
    contexts = {c.get("name"): c.get("context") or {} for c in doc.get("contexts") or []}
    user_name = contexts.get(doc.get("current-context"), {}).get("user")
    users = {u.get("name"): u.get("user") or {} for u in doc.get("users") or []}
    token_file = users.get(user_name, {}).get("tokenFile")
    if not token_file:
        return None
    return kubeconfig.parent / Path(str(token_file)).expanduser()


def _use_token_file(configuration: kclient.Configuration, path: Path,
                    refresh_seconds: float) -> None:
    """Send the file's token (refused now if unusable), and read the file again once
    `refresh_seconds` have passed."""
    source = _TokenFileSource(path, refresh_seconds)
    source.apply(configuration)
    configuration.refresh_api_key_hook = source.refresh


class _TokenFileSource:
    """The last good token of a file; a rewrite that cannot be used is logged and the
    last good token stays (the API server says whether it is still valid)."""

    def __init__(self, path: Path, refresh_seconds: float) -> None:
        self.path = path
        self.refresh_seconds = refresh_seconds
        self.token = read_token_file(path)
        self.read_at = time.monotonic()

    def apply(self, configuration: Any) -> None:
        configuration.api_key["BearerToken"] = self.token
        configuration.api_key_prefix["BearerToken"] = "Bearer"

    def refresh(self, configuration: Any) -> None:
        now = time.monotonic()
        if now - self.read_at >= self.refresh_seconds:
            self.read_at = now
            try:
                self.token = read_token_file(self.path)
            except KubeconfigTokenError as e:
                _log.warning("kubeconfig_token_unusable", file=str(self.path), error=str(e),
                             action="keeping the last good token")
        self.apply(configuration)

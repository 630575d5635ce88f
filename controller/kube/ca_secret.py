"""The CA root lives in a Secret (ambient-system/ambient-ca), so every controller
replica signs with the same root and a restarted controller keeps it.

The Secret holds the CA's state directory file by file (roots.json, the root
certificate and its key, the trust bundle). The first replica to start generates
the root and creates the Secret; a replica that loses that race (409 Conflict)
discards its own root and takes the Secret's. Files are written back 0600."""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from pathlib import Path

import structlog
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio.client.exceptions import ApiException

from controller.kube.errors import KubeError
from mesh.identity.ca import CertificateAuthority

_log = structlog.get_logger("controller.kube.ca")
CA_SECRET = "ambient-ca"


def _files(directory: Path) -> dict[str, str]:
    return {p.name: base64.b64encode(p.read_bytes()).decode()
            for p in sorted(directory.iterdir()) if p.is_file()}


def _write(directory: Path, data: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    for name, value in data.items():
        if "/" in name or name.startswith("."):
            raise KubeError(f"Secret {CA_SECRET} holds an unexpected key {name!r}; delete the "
                            "Secret to let the controller generate a new root")
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(value))


async def materialize_ca(api: kclient.ApiClient, namespace: str, ca_dir: Path,
                         trust_domain: str) -> str:
    """Make `ca_dir` hold the cluster's CA (from the Secret, or a new one stored there).
    Returns "loaded" or "created"."""
    core = kclient.CoreV1Api(api)
    try:
        secret = await core.read_namespaced_secret(CA_SECRET, namespace)
    except ApiException as e:
        if e.status != 404:
            raise KubeError(f"cannot read Secret {namespace}/{CA_SECRET}: {e.status} "
                            f"{e.reason}; the controller's RBAC must allow get/create on "
                            "it") from e
        secret = None
    if secret is not None:
        shutil.rmtree(ca_dir, ignore_errors=True)
        _write(ca_dir, dict(secret.data or {}))
        CertificateAuthority.load_or_create(ca_dir, trust_domain)  # validates what we got
        _log.info("ca_loaded", secret=f"{namespace}/{CA_SECRET}")
        return "loaded"
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "ca"
        CertificateAuthority.load_or_create(fresh, trust_domain)
        body = kclient.V1Secret(
            metadata=kclient.V1ObjectMeta(name=CA_SECRET, namespace=namespace,
                                          labels={"app.kubernetes.io/part-of": "ambient-mesh"}),
            type="Opaque", data=_files(fresh))
        try:
            await core.create_namespaced_secret(namespace, body)
        except ApiException as e:
            if e.status == 409:  # another replica was first: use its root
                return await materialize_ca(api, namespace, ca_dir, trust_domain)
            raise KubeError(f"cannot create Secret {namespace}/{CA_SECRET}: {e.status} "
                            f"{e.reason}") from e
        shutil.rmtree(ca_dir, ignore_errors=True)
        _write(ca_dir, body.data)
    _log.info("ca_created", secret=f"{namespace}/{CA_SECRET}")
    return "created"

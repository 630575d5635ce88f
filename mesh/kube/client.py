"""The Kubernetes API client every part builds the same way (controller, node agent,
`ambientctl status --kubeconfig`)."""

from __future__ import annotations

from pathlib import Path

from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig


async def api_client(kubeconfig: Path | None) -> kclient.ApiClient:
    """From a kubeconfig file, or the pod's service account when running in-cluster."""
    configuration = kclient.Configuration()
    if kubeconfig is not None:
        await kconfig.load_kube_config(config_file=str(kubeconfig),
                                       client_configuration=configuration)
    else:
        kconfig.load_incluster_config(client_configuration=configuration)
    return kclient.ApiClient(configuration)

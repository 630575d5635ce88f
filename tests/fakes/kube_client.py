"""A real kubernetes_asyncio ApiClient pointed at the fake API server."""

from __future__ import annotations

from kubernetes_asyncio import client as kclient

from tests.fakes.kube_apiserver import FakeApiServer


def api_client(server: FakeApiServer) -> kclient.ApiClient:
    configuration = kclient.Configuration(host=server.url)
    configuration.verify_ssl = False  # the fake's HTTPS (for kubectl) is self-signed
    configuration.api_key = {"BearerToken": server.token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    return kclient.ApiClient(configuration)


def kubeconfig(server: FakeApiServer) -> str:
    """A kubeconfig file's text for the fake server (what `--kubeconfig` reads)."""
    return (
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters:\n- name: fake\n  cluster: {{server: '{server.url}'}}\n"
        "users:\n- name: fake\n  user: {token: " + server.token + "}\n"
        "contexts:\n- name: fake\n  context: {cluster: fake, user: fake}\n")

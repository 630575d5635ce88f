"""The fake API server's TokenRequest (`kubectl create token`) behaves as the real one
where tests depend on it: a token of an existing ServiceAccount for the requested
audiences, TokenReview accepting it (bound to a pod's name and uid when asked) and
refusing it once that pod is gone; 404 for an unknown account, 422 under 10 minutes.
Driven with the real kubernetes_asyncio client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio.client.exceptions import ApiException

from tests.fakes.kube_apiserver import API_SERVER_AUDIENCE, FakeApiServer
from tests.fakes.kube_client import api_client

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    s = FakeApiServer()
    await s.start()
    s.create({"kind": "Namespace", "metadata": {"name": "demo"}})
    s.create({"kind": "ServiceAccount", "metadata": {"name": "waypoint", "namespace": "demo"}})
    s.create({"kind": "Pod", "metadata": {"name": "wp-1", "namespace": "demo"},
              "spec": {"serviceAccountName": "waypoint",
                       "containers": [{"name": "c", "image": "i"}]}})
    try:
        yield s
    finally:
        await s.stop()


async def review(api: kclient.ApiClient, token: str, audiences: list[str]
                 ) -> kclient.V1TokenReviewStatus:
    result = await kclient.AuthenticationV1Api(api).create_token_review(
        kclient.V1TokenReview(spec=kclient.V1TokenReviewSpec(token=token,
                                                             audiences=audiences)))
    status: kclient.V1TokenReviewStatus = result.status
    return status


async def test_a_pod_bound_token_is_reviewed_until_its_pod_goes(
        server: FakeApiServer) -> None:
    api = api_client(server)
    try:
        core = kclient.CoreV1Api(api)
        pod = server.get("Pod", "demo", "wp-1")
        assert pod is not None
        made = await core.create_namespaced_service_account_token(
            "waypoint", "demo", kclient.AuthenticationV1TokenRequest(
                spec=kclient.V1TokenRequestSpec(
                    audiences=["ambient-mesh"], expiration_seconds=3600,
                    bound_object_ref=kclient.V1BoundObjectReference(
                        kind="Pod", api_version="v1", name="wp-1",
                        uid=pod["metadata"]["uid"]))))
        token = made.status.token
        assert token and made.status.expiration_timestamp is not None
        ok = await review(api, token, ["ambient-mesh"])
        assert ok.authenticated and ok.user.username == "system:serviceaccount:demo:waypoint"
        assert ok.user.extra["authentication.kubernetes.io/pod-uid"] == [pod["metadata"]["uid"]]
        assert not (await review(api, token, ["other"])).authenticated
        server.delete("Pod", "demo", "wp-1")
        gone = await review(api, token, ["ambient-mesh"])
        assert not gone.authenticated and "not found" in gone.error
    finally:
        await api.close()


async def test_refusals_and_defaults_as_the_real_server(server: FakeApiServer) -> None:
    api = api_client(server)
    try:
        core = kclient.CoreV1Api(api)
        with pytest.raises(ApiException) as missing:
            await core.create_namespaced_service_account_token(
                "nobody", "demo", kclient.AuthenticationV1TokenRequest(
                    spec=kclient.V1TokenRequestSpec(audiences=[])))
        assert missing.value.status == 404
        with pytest.raises(ApiException) as short:
            await core.create_namespaced_service_account_token(
                "waypoint", "demo", kclient.AuthenticationV1TokenRequest(
                    spec=kclient.V1TokenRequestSpec(audiences=[], expiration_seconds=60)))
        assert short.value.status == 422 and "less than 10 minutes" in str(short.value.body)
        made = await core.create_namespaced_service_account_token(
            "waypoint", "demo", kclient.AuthenticationV1TokenRequest(
                spec=kclient.V1TokenRequestSpec(audiences=[])))
        assert made.spec.audiences == [API_SERVER_AUDIENCE]
        assert (await review(api, made.status.token, [API_SERVER_AUDIENCE])).authenticated
        assert not (await review(api, made.status.token, ["ambient-mesh"])).authenticated
    finally:
        await api.close()

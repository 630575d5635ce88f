"""`ambient-controller --source kubernetes --kubeconfig FILE` whose user has a
`tokenFile`: the real controller process against the fake API server.

Token files end with a newline more often than not (`echo TOKEN > file`, kubectl
create token > file); the controller used to die on it with aiohttp's "Forbidden
control character" traceback. Surrounding whitespace is stripped; a token with a
control character inside is refused at start with a message naming the file; the
file is read again later, as kubectl does, so a rotated token is used."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from mesh.kube.client import KubeconfigTokenError, api_client, read_token_file
from mesh.kube.errors import KubeError
from tests.e2e.waypoint_helpers import stop_process
from tests.fakes.kube_apiserver import FakeApiServer

pytestmark = pytest.mark.anyio
CONTROLLER = str(Path(sys.executable).with_name("ambient-controller"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    s = FakeApiServer(bookmark_interval=0.2)
    await s.start()
    s.create({"kind": "Namespace", "metadata": {"name": "ambient-system"}})
    try:
        yield s
    finally:
        await s.stop()


def kubeconfig(server: FakeApiServer, path: Path, token_file: Path) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters:\n- name: fake\n  cluster: {{server: '{server.url}'}}\n"
        f"users:\n- name: fake\n  user: {{tokenFile: '{token_file}'}}\n"
        "contexts:\n- name: fake\n  context: {cluster: fake, user: fake}\n")
    return path


def events(text: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


async def run_controller(cfg: Path, state: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as err:
        return subprocess.Popen(
            [CONTROLLER, "--source", "kubernetes", "--kubeconfig", str(cfg),
             "--state-dir", str(state), "--grpc-addr", "127.0.0.1:0",
             "--admin-addr", "127.0.0.1:0"], stdout=err, stderr=subprocess.STDOUT)


async def test_token_file_ending_with_a_newline_works(server: FakeApiServer,
                                                      tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(server.token + "\n")
    cfg = kubeconfig(server, tmp_path / "kubeconfig", token)
    log = tmp_path / "controller.log"
    proc = await run_controller(cfg, tmp_path / "state", log)
    try:
        for _ in range(300):
            if proc.poll() is not None or any(
                    e.get("event") == "controller_started" for e in events(log.read_text())):
                break
            await asyncio.sleep(0.05)
        text = log.read_text()
        assert proc.poll() is None, f"the controller died:\n{text}"
        assert any(e.get("event") == "kubernetes_synced" for e in events(text)), text
        assert "Traceback" not in text
        # It really talked to the API server with the token (lists and watches).
        assert any(path == "/api/v1/pods" for _, path, _ in server.requests)
    finally:
        await asyncio.to_thread(stop_process, proc, 10)


@pytest.mark.parametrize("content", ["ab\ncd\n", "abc\x07def"])
async def test_token_with_an_inner_control_character_is_refused_naming_the_file(
        server: FakeApiServer, tmp_path: Path, content: str) -> None:
    token = tmp_path / "token"
    token.write_text(content)
    cfg = kubeconfig(server, tmp_path / "kubeconfig", token)
    log = tmp_path / "controller.log"
    proc = await run_controller(cfg, tmp_path / "state", log)
    try:
        code = await asyncio.to_thread(proc.wait, 20)
    finally:
        if proc.poll() is None:
            await asyncio.to_thread(stop_process, proc, 10)
    text = log.read_text()
    assert code != 0
    assert str(token) in text and "control character" in text, text
    assert "Traceback" not in text, text


async def test_token_file_is_read_again_after_it_changes(server: FakeApiServer,
                                                         tmp_path: Path) -> None:
    """As kubectl does (and as the in-cluster loader does for the mounted token): a
    token file rewritten (rotated) is picked up without a restart."""
    from kubernetes_asyncio import client as kclient

    token = tmp_path / "token"
    token.write_text("old-token\n")
    cfg = kubeconfig(server, tmp_path / "kubeconfig", token)
    api = await api_client(cfg, token_refresh_seconds=0)
    try:
        core = kclient.CoreV1Api(api)
        with pytest.raises(kclient.ApiException) as info:
            await core.list_namespace()
        assert info.value.status == 401
        token.write_text(server.token + "\n")
        names = [n.metadata.name for n in (await core.list_namespace()).items]
        assert names == ["ambient-system"]
        # A rewrite that cannot be used: said, and the last good token stays in use.
        token.write_text("bad\x01token")
        with structlog.testing.capture_logs() as logs:
            assert len((await core.list_namespace()).items) == 1
        assert any(e["event"] == "kubeconfig_token_unusable" and e["file"] == str(token)
                   for e in logs)
    finally:
        await api.close()


def test_token_file_reading_rules(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  abc.def-ghi \r\n")
    assert read_token_file(token) == "abc.def-ghi"
    for bad, words in (("", "is empty"), ("\n\n", "is empty"), ("ab cd\x7f", "0x7f"),
                       ("ab\tcd", "0x09")):
        token.write_text(bad)
        with pytest.raises(KubeconfigTokenError, match=words) as info:
            read_token_file(token)
        assert str(token) in str(info.value)
    with pytest.raises(KubeconfigTokenError, match="cannot read"):
        read_token_file(tmp_path / "missing")


async def test_no_kubeconfig_outside_a_pod_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeError, match="pass --kubeconfig"):
        await api_client(None)


def test_node_agent_refuses_the_same_token_file_naming_it(tmp_path: Path) -> None:
    """The node agent builds its API client the same way: a clear error, no traceback
    (before it loads anything: the API client is its first step)."""
    token = tmp_path / "token"
    token.write_text("ab\x07cd\n")
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        "clusters:\n- name: fake\n  cluster: {server: 'http://127.0.0.1:9'}\n"
        f"users:\n- name: fake\n  user: {{tokenFile: '{token}'}}\n"
        "contexts:\n- name: fake\n  context: {cluster: fake, user: fake}\n")
    sa_token = tmp_path / "sa-token"
    sa_token.write_text("x")
    done = subprocess.run(
        [sys.executable, "-m", "nodeagent.k8s_main", "--node", "n1", "--token-file",
         str(sa_token), "--kubeconfig", str(cfg), "--health-addr", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert str(token) in done.stderr and "control character" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr

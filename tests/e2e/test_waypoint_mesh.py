"""The waypoint inside the mesh: a Gateway makes the controller run it as a pod, node
proxies send the service's traffic to it over HBONE, and it routes by HTTPRoute."""

from __future__ import annotations

import secrets
from collections import Counter

import pytest

from tests.e2e.mesh_harness import local_mesh, wait_for
from tests.topologies import PY, SERVE, SLEEP, documents, namespace, pod, service, waypoint

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

CONFIG = documents(
    namespace("shop"),
    pod("v1", "shop", "node-1", SERVE, "catalog", "app: catalog, version: v1"),
    pod("v2", "shop", "node-2", SERVE, "catalog", "app: catalog, version: v2"),
    pod("client", "shop", "node-1", SLEEP, "client"),
    waypoint("shop"),
    service("catalog", "shop", "app: catalog", use_waypoint="waypoint"),
    service("catalog-v1", "shop", "version: v1", use_waypoint="waypoint"),
    service("catalog-v2", "shop", "version: v2", use_waypoint="waypoint"),
    """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: catalog
  namespace: shop
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: catalog
    port: 80
  rules:
  - matches:
    - headers:
      - name: x-version
        value: v2
    backendRefs:
    - name: catalog-v2
      port: 80
  - backendRefs:
    - name: catalog-v1
      port: 80
      weight: 80
    - name: catalog-v2
      port: 80
      weight: 20
""",
)


CLOSE_CLIENT = """
import socket
s = socket.create_connection(("catalog.shop", 80), timeout=5)
s.sendall(b"GET / HTTP/1.1\\r\\nHost: catalog.shop\\r\\nConnection: close\\r\\n\\r\\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.decode())
"""


def test_routes_through_the_waypoint_pod() -> None:
    with local_mesh("amw" + secrets.token_hex(2)) as mesh:
        mesh.apply(CONFIG)
        client = mesh.pod("shop", "client", enrolled=True)
        mesh.pod("shop", "waypoint")

        def get(*headers: str) -> str:
            argv = ["curl", "-sS", "-m", "5"]
            for h in headers:
                argv += ["-H", h]
            out = mesh.exec(client, [*argv, "http://catalog.shop/"])
            assert out.returncode == 0, out.stderr
            return out.stdout.strip()

        wait_for("the waypoint routes", lambda: get("x-version: v2") == "hello from v2",
                 timeout=40)
        assert {get("x-version: v2") for _ in range(10)} == {"hello from v2"}
        wait_for("v1 answering", lambda: get() == "hello from v1", timeout=20)
        counts = Counter(get() for _ in range(100))
        print(f"80/20 split over 100 requests: {dict(counts)}")
        assert set(counts) == {"hello from v1", "hello from v2"}
        assert 5 <= counts["hello from v2"] <= 40
        # `Connection: close` ends in a clean FIN through waypoint and tunnels, not a reset.
        closing = mesh.exec(client, [PY, "-c", CLOSE_CLIENT])
        assert closing.returncode == 0 and closing.stdout.startswith("HTTP/1.1 200"), \
            closing.stderr
        waypoint = mesh.runtime.get_pod("shop", "waypoint")
        logs = mesh.logs(client.node) + mesh.logs(waypoint.node)
        assert '"destination_service":"shop/catalog"' in logs

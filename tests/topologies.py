"""YAML builders for the topologies the real-mesh tests apply.

Each end-to-end test states its topology as a list of these calls, so a test file
shows only what is particular to it (which pods, which policy) and the manifest shape
of a Namespace, a STRICT PeerAuthentication or a waypoint Gateway is written once.
The builders return manifest text (what `LocalMesh.apply` takes); `documents` joins
them into one multi-document YAML."""

from __future__ import annotations

import sys
from pathlib import Path

HELLO = str(Path(__file__).parent / "e2e" / "apps" / "hello.py")
PY = sys.executable
SLEEP = ["sleep", "infinity"]
SERVE = [PY, HELLO, "8080"]


def documents(*docs: str) -> str:
    """One multi-document YAML text of the given manifests."""
    return "\n---\n".join(docs)


def namespace(name: str, ambient: bool = True) -> str:
    """A Namespace; `ambient` enrolls its pods (dataplane-mode label)."""
    labels = """
  labels:
    ambientmesh.io/dataplane-mode: ambient""" if ambient else ""
    return f"""
apiVersion: v1
kind: Namespace
metadata:
  name: {name}{labels}
"""


def strict(ns: str, name: str = "strict") -> str:
    """A namespace-wide PeerAuthentication in STRICT mode: plaintext is refused."""
    return f"""
apiVersion: ambientmesh.io/v1alpha1
kind: PeerAuthentication
metadata:
  name: {name}
  namespace: {ns}
spec:
  mtls:
    mode: STRICT
"""


def pod(name: str, ns: str, node: str, command: list[str], sa: str = "default",
        labels: str = "") -> str:
    """A one-container Pod pinned to `node`; `labels` is the inside of a YAML map."""
    return f"""
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{{labels}}}
spec:
  nodeName: {node}
  serviceAccountName: {sa}
  containers:
  - name: main
    command: {command!r}
"""


def waypoint(ns: str, name: str = "waypoint", hbone_listener: bool = True) -> str:
    """A waypoint Gateway (the controller runs it as a pod named `name`)."""
    listeners = """
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE""" if hbone_listener else ""
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: {ns}
spec:
  gatewayClassName: ambient-waypoint{listeners}
"""


def service(name: str, ns: str, selector: str, use_waypoint: str | None = None,
            port: int = 80, target_port: int = 8080) -> str:
    """A Service with one `http` port; `selector` is the inside of a YAML map;
    `use_waypoint` binds it to that waypoint (ambientmesh.io/use-waypoint)."""
    labels = f"""
  labels:
    ambientmesh.io/use-waypoint: {use_waypoint}""" if use_waypoint else ""
    return f"""
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}{labels}
spec:
  selector: {{{selector}}}
  ports:
  - name: http
    port: {port}
    targetPort: {target_port}
"""


def deny_methods(name: str, ns: str, service: str, methods: list[str]) -> str:
    """An L7 AuthorizationPolicy targeting `service` (so enforced by its waypoint)
    that denies the given HTTP methods."""
    return f"""
apiVersion: ambientmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {ns}
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: {service}
  action: DENY
  rules:
  - to:
    - operation:
        methods: {methods!r}
"""

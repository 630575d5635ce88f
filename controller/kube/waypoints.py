"""Waypoints in Kubernetes: for each Gateway of class ambient-waypoint, the controller
owns a ServiceAccount, a Deployment, a Service and a NetworkPolicy of the same name, with
the Gateway as their controlling owner (Kubernetes' garbage collector deletes them with
the Gateway; the controller deletes them itself too, e.g. when the class changes).

Both halves are pure: `render` says what one Gateway needs, `plan` compares that with
what the API server holds (the reconciler's watches of the objects it owns) and says
what to apply and what to delete. The I/O is in waypoint_reconciler."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.kube.translate import WAYPOINT_POD_LABEL
from mesh.config.annotations import (
    DATAPLANE_MODE,
    DATAPLANE_NONE,
    GATEWAY_NAME_LABEL,
    WAYPOINT_CLASS,
    waypoint_args,
)

FIELD_MANAGER = "ambient-controller"
TOKEN_DIR = "/var/run/secrets/ambient"
TOKEN_AUDIENCE = "ambient-mesh"
TOKEN_SECONDS = 86400
APPLY = "application/apply-patch+yaml"
MANAGED_BY = "app.kubernetes.io/managed-by"
# What the reconciler watches: exactly the objects render() labels.
OWNED_SELECTOR = f"{MANAGED_BY}={FIELD_MANAGER},{GATEWAY_NAME_LABEL}"
OWNED_KINDS = ("ServiceAccount", "Deployment", "Service", "NetworkPolicy")

Key = tuple[str, str]  # (namespace, name) of a Gateway and of everything it owns
ObjectId = tuple[str, str, str]  # (kind, namespace, name)


def render(gateway: Mapping[str, Any], *, image: str, controller_addr: str,
           audience: str = TOKEN_AUDIENCE) -> list[dict[str, Any]]:
    """ServiceAccount, Deployment and Service of one waypoint Gateway."""
    meta = gateway["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    owner = {"apiVersion": gateway.get("apiVersion", "gateway.networking.k8s.io/v1"),
             "kind": "Gateway", "name": name, "uid": meta.get("uid", ""),
             "controller": True, "blockOwnerDeletion": True}
    labels = {WAYPOINT_POD_LABEL: name, GATEWAY_NAME_LABEL: name,
              MANAGED_BY: FIELD_MANAGER}

    def object_meta() -> dict[str, Any]:
        return {"name": name, "namespace": namespace, "labels": dict(labels),
                "ownerReferences": [dict(owner)]}

    container = {
        "name": "waypoint", "image": image, "imagePullPolicy": "IfNotPresent",
        "command": ["ambient-waypoint", "--name", name, "--namespace", namespace,
                    "--controller", controller_addr, "--token-file", f"{TOKEN_DIR}/token",
                    "--access-log", "stdout",
                    *waypoint_args(meta.get("annotations") or {})],
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "ports": [{"name": "hbone", "containerPort": 15008, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": 15020, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15020},
                           "periodSeconds": 5},
        # Live, not ready: a waypoint waiting for its certificate is not to be restarted.
        "livenessProbe": {"httpGet": {"path": "/healthz/live", "port": 15020},
                          "initialDelaySeconds": 30, "periodSeconds": 15},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"cpu": "2", "memory": "512Mi"}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "ambient-token", "mountPath": TOKEN_DIR, "readOnly": True}],
    }
    pod_labels = {WAYPOINT_POD_LABEL: name, GATEWAY_NAME_LABEL: name}
    deployment_meta = object_meta()
    deployment_meta["annotations"] = {
        # Waypoint images are whatever the controller was told (--waypoint-image): a tag
        # loaded into kind nodes has no digest, and Always would need a registry.
        "checkov.io/skip1": "CKV_K8S_43=the image is the controller's --waypoint-image tag",
        "checkov.io/skip2": "CKV_K8S_15=IfNotPresent so images loaded with kind load work",
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": deployment_meta,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {WAYPOINT_POD_LABEL: name}},
            "template": {
                "metadata": {"labels": pod_labels,
                             "annotations": {DATAPLANE_MODE: DATAPLANE_NONE}},
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                        "fsGroup": 10001,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [{"name": "ambient-token", "projected": {"sources": [{
                        "serviceAccountToken": {"path": "token", "audience": audience,
                                                "expirationSeconds": TOKEN_SECONDS}}]}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": object_meta(),
        "spec": {"selector": {WAYPOINT_POD_LABEL: name},
                 "ports": [{"name": "hbone", "port": 15008, "targetPort": 15008,
                            "protocol": "TCP"}]},
    }
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": object_meta(),
               "automountServiceAccountToken": False}
    policy = {  # a waypoint accepts HBONE and metrics scrapes, nothing else
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": object_meta(),
        "spec": {"podSelector": {"matchLabels": {WAYPOINT_POD_LABEL: name}},
                 "policyTypes": ["Ingress"],
                 "ingress": [{"ports": [{"port": 15008, "protocol": "TCP"},
                                        {"port": 15020, "protocol": "TCP"}]}]},
    }
    return [account, deployment, service, policy]




def covers(observed: Any, wanted: Any) -> bool:
    """True if every field we set has our value in what the API server holds. The
    server adds defaults and status (also inside list items: ports, containers), and
    others may add labels; none of that is drift. A list must keep its length."""
    if isinstance(wanted, dict):
        return isinstance(observed, dict) and all(
            k in observed and covers(observed[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return (isinstance(observed, list) and len(observed) == len(wanted)
                and all(covers(o, w) for o, w in zip(observed, wanted, strict=True)))
    return bool(observed == wanted)


def overlay(live: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """`live` with every field of `wanted` set to our value, for a replace: maps are
    merged (what the server and others added stays: clusterIP, extra labels, status),
    lists are ours whole (a hand-added or re-keyed port goes)."""
    out = dict(copy.deepcopy(live))
    for k, v in wanted.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = overlay(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def digest(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def waypoint_gateways(gateways: Iterable[Mapping[str, Any]]) -> dict[Key, Mapping[str, Any]]:
    out: dict[Key, Mapping[str, Any]] = {}
    for gw in gateways:
        if (gw.get("spec") or {}).get("gatewayClassName") != WAYPOINT_CLASS:
            continue
        meta = gw.get("metadata") or {}
        out[(str(meta.get("namespace") or ""), str(meta.get("name") or ""))] = gw
    return out


@dataclass
class WaypointPlan:
    # Per Gateway, the rendered objects to apply (in order: the account first).
    apply: dict[Key, list[dict[str, Any]]] = field(default_factory=dict)
    # Owned objects whose Gateway is gone, with the uid seen (a delete precondition).
    delete: list[tuple[ObjectId, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.apply or self.delete)


def plan(gateways: Iterable[Mapping[str, Any]],
         observed: Mapping[str, Mapping[Key, Mapping[str, Any]] | None], *,
         image: str, controller_addr: str, gateways_listed: bool,
         last_applied: Mapping[ObjectId, str] | None = None) -> WaypointPlan:
    """What to do so that the API server holds exactly what the waypoint Gateways need.

    `observed` has, per owned kind, the objects the reconciler's watch sees, or None
    while that watch has not listed (yet, or at all: no RBAC to list it). Objects of
    an unobserved kind are applied when their rendering differs from `last_applied`
    (as a controller without watches would), and are never deleted. Nothing is deleted
    until the Gateways themselves were listed: an empty cache is not an empty cluster."""
    wanted = waypoint_gateways(gateways)
    last = last_applied or {}
    out = WaypointPlan()
    for ref, gw in sorted(wanted.items()):
        todo = []
        for obj in render(gw, image=image, controller_addr=controller_addr):
            kind = obj["kind"]
            seen = observed.get(kind)
            if seen is None:
                if last.get((kind, *ref)) != digest(obj):
                    todo.append(obj)
            elif not covers(seen.get(ref), obj):
                todo.append(obj)
        if todo:
            out.apply[ref] = todo
    if gateways_listed:
        for kind in OWNED_KINDS:
            held = observed.get(kind) or {}
            for key in sorted(held):
                if key not in wanted:
                    uid = str((held[key].get("metadata") or {}).get("uid") or "")
                    out.delete.append(((kind, *key), uid))
    return out

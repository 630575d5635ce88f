"""What enforces a refused security object that has no valid version to keep.

An object the API server holds but the controller refuses (pruned, emptied, a typo
kept by the CRD, a field we cannot enforce) keeps its previous valid version in force.
When there is none (a new object, or a controller that restarted), leaving it out
would fail open: a workload whose only ALLOW policy vanishes is open to everyone, a
DENY policy that vanishes denies nothing, a STRICT PeerAuthentication that vanishes
accepts plaintext. So it is replaced by a stand-in that never grants more than any
version of it could have, for the workloads it was written for (the whole namespace
when its own scope cannot be read), as ztunnel does with policies it cannot parse:

- AuthorizationPolicy ALLOW -> ALLOW with no rules: its workloads become
  default-deny, other ALLOW policies still allow what they allow;
- AuthorizationPolicy DENY, or an action that cannot be read -> DENY everything;
- PeerAuthentication -> STRICT.

Other kinds are left out (nothing they say widens access). A stand-in carries the
annotation `ambientmesh.io/refused` with the reason, so it shows as what it is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from mesh.config.base import Resource, WorkloadSelector
from mesh.config.security import (
    API_VERSION,
    AuthorizationPolicy,
    PeerAuthentication,
    PolicyTargetReference,
)

REFUSED_ANNOTATION = "ambientmesh.io/refused"


def is_stand_in(obj: Resource) -> bool:
    return REFUSED_ANNOTATION in obj.metadata.annotations


def _scope(spec: Mapping[str, Any], namespace: str, *, targets: bool) -> dict[str, Any]:
    """The object's own selector or targetRefs when they validate (and stay in its own
    namespace); {} (namespace-wide) when they do not, a superset of whatever the author
    meant within the namespace they may write to."""
    selector, refs = spec.get("selector"), spec.get("targetRefs")
    try:
        if selector is not None and not (targets and refs):
            WorkloadSelector.model_validate(selector)
            return {"selector": selector}
        if targets and refs and selector is None and isinstance(refs, list):
            for ref in refs:
                parsed = PolicyTargetReference.model_validate(ref)
                if parsed.namespace not in (None, "", namespace):
                    return {}
            return {"targetRefs": refs}
    except ValidationError:
        pass
    return {}


def stand_in(raw: Mapping[str, Any], reason: str) -> Resource | None:
    """The stand-in for refused object `raw` (as the API server holds it), or None for
    kinds whose absence widens nothing."""
    kind = raw.get("kind")
    meta = raw.get("metadata") or {}
    spec = raw.get("spec") if isinstance(raw.get("spec"), Mapping) else {}
    assert isinstance(spec, Mapping)
    namespace = meta.get("namespace") or "default"
    metadata = {"name": meta.get("name"), "namespace": namespace,
                "annotations": {REFUSED_ANNOTATION: reason}}
    if kind == AuthorizationPolicy.KIND:
        allow = spec.get("action", "ALLOW") == "ALLOW"
        body = {**_scope(spec, namespace, targets=True), "action": "ALLOW" if allow else "DENY",
                "rules": [] if allow else [{}]}
        return AuthorizationPolicy.model_validate(
            {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": body})
    if kind == PeerAuthentication.KIND:
        body = {**_scope(spec, namespace, targets=False), "mtls": {"mode": "STRICT"}}
        return PeerAuthentication.model_validate(
            {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": body})
    return None


def describe(obj: Resource | None) -> str:
    """What is in force for a refused object, for logs and status."""
    if obj is None:
        return "nothing (it grants nothing when absent)"
    if not is_stand_in(obj):
        return "its previous valid version"
    if isinstance(obj, AuthorizationPolicy):
        return ("a deny-all stand-in" if obj.spec.action == "DENY"
                else "an allow-nothing stand-in")
    return "a STRICT stand-in"

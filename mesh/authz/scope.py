"""Which of a waypoint's policies apply to one of the services it serves.

The controller sends a waypoint the policies whose targetRefs name its Gateway or one
of its services. A Gateway target applies the policy to every service of the
waypoint, a Service target to that service; a policy may have both. Applying a
policy to more services than meant only adds checks, so where it cannot be told
(no targets, waypoint unnamed in a hand-made snapshot) it applies everywhere."""

from __future__ import annotations

from mesh.authz.model import Policy


def applies_to_service(policy: Policy, service: str, waypoint: tuple[str, str] | None
                       ) -> bool:
    """`service` is "ns/name"; `waypoint` is the waypoint Gateway's (ns, name), None
    when the snapshot does not say."""
    if not policy.targets:
        return True
    for t in policy.targets:
        if t.kind == "Gateway" and (waypoint is None or (t.namespace, t.name) == waypoint):
            return True
        if t.kind == "Service" and f"{t.namespace}/{t.name}" == service:
            return True
    return False

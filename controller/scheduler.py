"""Pod placement for local mode (the controller is also the scheduler).

Pure: inputs in, assignments out. A given spec.nodeName is honoured; a pod keeps the
node it already has (placements are persisted, so a controller restart never moves a
running pod); new pods go to the least-loaded known node (ties: name order).

In Kubernetes mode (`schedule=False`) only spec.nodeName counts: the kubelet of that
node runs the pod. A pod without one is never placed, so the controller never vouches
(to the CA, to proxies) for a pod no kubelet runs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

PodRef = tuple[str, str]


def assign_nodes(
    pods: Iterable[tuple[PodRef, str | None]],
    nodes: Iterable[str],
    previous: Mapping[PodRef, str],
    *,
    schedule: bool = True,
) -> dict[PodRef, str]:
    """Placement of every pod that can be placed; pods with no node to go to are left
    out (Pending) until a node registers (local mode) or a kubelet runs them."""
    known = sorted(set(nodes))
    wanted = sorted(pods)
    result: dict[PodRef, str] = {}
    load: Counter[str] = Counter()
    floating: list[PodRef] = []
    for ref, requested in wanted:
        if requested:
            result[ref] = requested
        elif not schedule:
            continue
        elif ref in previous and previous[ref] in known:
            result[ref] = previous[ref]
        else:
            floating.append(ref)
            continue
        load[result[ref]] += 1
    for ref in floating:
        if not known:
            break
        node = min(known, key=lambda n: (load[n], n))
        result[ref] = node
        load[node] += 1
    return result

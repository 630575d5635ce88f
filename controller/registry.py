"""The registry: the one merged view of everything the controller knows — config
objects from the file source, nodes that registered, where pods run, service VIPs and
what node agents report — resolved into a ClusterView on demand.

Not thread-safe; owned by the controller's event loop. Listeners are told when
anything changed; they pull the new view (cheap when nothing changed)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import structlog

from controller.scheduler import assign_nodes
from controller.state import StateDir
from controller.view import (
    ClusterView,
    NodeRecord,
    PodState,
    Ref,
    build_view,
    desired_pods,
)
from controller.vips import DEFAULT_RANGE, allocate_vips
from mesh.config import ObjectKey, Resource, Service
from mesh.config.annotations import GATEWAY_NAME_LABEL
from mesh.config.core import PodSpec
from mesh.ports import CONTROLLER_GRPC_PORT

_log = structlog.get_logger("controller.registry")


class Registry:
    def __init__(
        self,
        *,
        trust_domain: str = "cluster.local",
        controller_addr: str = f"127.0.0.1:{CONTROLLER_GRPC_PORT}",
        state: StateDir | None = None,
        service_cidr: str = DEFAULT_RANGE,
        schedule: bool = True,
    ) -> None:
        """`schedule`: local mode, where the controller is the scheduler and derives
        pods from Deployments and waypoint Gateways. False in Kubernetes mode: only
        pods the API server has bound to a node exist here, nothing is derived or
        placed by the controller."""
        self.trust_domain = trust_domain
        self.schedule = schedule
        self.controller_addr = controller_addr
        self._state = state
        self._service_cidr = service_cidr
        self._objects: dict[ObjectKey, Resource] = {}
        self._nodes: dict[str, NodeRecord] = state.load_nodes() if state else {}
        # Kubernetes mode ignores placements a local-mode run left in the state dir.
        self._placements: dict[Ref, str] = (state.load_placements() if state and schedule
                                            else {})
        self._vips: dict[Ref, str] = state.load_vips() if state else {}
        self._pod_states: dict[Ref, PodState] = state.load_pod_states() if state else {}
        self._view: ClusterView | None = None
        self._waypoint_accounts: tuple[ClusterView, set[Ref]] | None = None
        self._placements_stale = True
        self._pod_states_unsaved = False
        self._uids: dict[tuple[str, str, str | None, str], str] = {}
        self._digests: dict[int, tuple[PodSpec, str]] = {}
        self.generation = 0
        self._listeners: list[Callable[[], None]] = []

    # -- inputs -------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        self._view = None
        self.generation += 1
        for listener in self._listeners:
            listener()

    def replace_config(self, objects: Mapping[ObjectKey, Resource]) -> None:
        if dict(objects) == self._objects:
            return
        self._objects = dict(objects)
        self._placements_stale = True
        self._changed()

    def objects(self, kind: str | None = None) -> list[Resource]:
        return [o for k, o in sorted(self._objects.items()) if kind is None or k.kind == kind]

    def register_node(self, name: str, pod_cidrs: Iterable[str]) -> None:
        record = NodeRecord(name, tuple(pod_cidrs))
        if self._nodes.get(name) == record:
            return
        self._nodes[name] = record
        if self._state:
            self._state.save_nodes(self._nodes)
        _log.info("node_registered", node=name, pod_cidrs=list(record.pod_cidrs))
        self._placements_stale = True
        self._changed()

    @property
    def nodes(self) -> dict[str, NodeRecord]:
        return dict(self._nodes)

    def report_pods(self, node: str, states: Iterable[tuple[Ref, PodState]]) -> list[str]:
        """Replace what is known of the pods on `node`; returns refs it does not run."""
        if self._placements_stale:
            self.view()  # places pods created since the last build
        new = {ref: s for ref, s in self._pod_states.items() if s.node != node}
        unknown = []
        for ref, s in states:
            # Placements, not the view: a burst of reports must not rebuild it each time.
            if self._placements.get(ref) != node:
                unknown.append(f"{ref[0]}/{ref[1]}")
                continue
            new[ref] = PodState(s.uid, node, s.ipv4, s.ipv6, s.phase, s.message)
        if new != self._pod_states:
            self._pod_states = new
            self._pod_states_unsaved = True
            self._changed()
        return unknown

    # -- outputs ------------------------------------------------------------------

    def view(self) -> ClusterView:
        if self._view is None:
            self._view = self._rebuild()
        return self._view

    def pod_placement(self, namespace: str, name: str) -> tuple[str, str] | None:
        """(node name, service account) of a scheduled pod (the CA's PodDirectory)."""
        pod = self.view().pods.get((namespace, name))
        if pod is None or pod.node is None:
            return None
        return (pod.node, pod.service_account)

    def is_waypoint(self, namespace: str, name: str) -> bool:
        """Whether `name` is a waypoint's service account (the CA's PodDirectory): a
        waypoint Gateway of that name exists, or a pod labelled as that Gateway's still
        runs (its Gateway deleted, or refused by validation, while the pod terminates).
        Erring towards "yes" only refuses more."""
        view = self.view()
        if self._waypoint_accounts is None or self._waypoint_accounts[0] is not view:
            accounts = set(view.waypoints)
            accounts.update((p.namespace, p.labels[GATEWAY_NAME_LABEL])
                            for p in view.pods.values() if p.labels.get(GATEWAY_NAME_LABEL))
            self._waypoint_accounts = (view, accounts)
        return (namespace, name) in self._waypoint_accounts[1]

    def _rebuild(self) -> ClusterView:
        objects = list(self._objects.values())
        desired = desired_pods(objects, self.controller_addr)
        if not self.schedule:  # no stand-in pods (e.g. a Gateway's) in Kubernetes mode
            desired = [d for d in desired if d.origin == "Pod"]
        placements = assign_nodes(
            ((d.ref, d.spec.node_name) for d in desired), self._nodes, self._placements,
            schedule=self.schedule)
        self._placements_stale = False
        if self._pod_states_unsaved and self._state:
            # Saved once per rebuild (debounced), not on every report of a burst.
            self._state.save_pod_states(self._pod_states)
        self._pod_states_unsaved = False
        if placements != self._placements:
            self._placements = placements
            if self._state:
                self._state.save_placements(placements)
        services = [(o.namespace, o.name, o.spec.cluster_ip) for o in objects
                    if isinstance(o, Service)]
        vips = allocate_vips(
            (((ns, n), ip) for ns, n, ip in services if ip != "None"),
            self._vips, self._service_cidr)
        if vips != self._vips:
            self._vips = vips
            if self._state:
                self._state.save_vips(vips)
        view = build_view(
            objects, trust_domain=self.trust_domain, nodes=self._nodes,
            placements=placements, vips=vips, pod_states=self._pod_states, desired=desired,
            uid_cache=self._uids, digest_cache=self._digests,
        )
        if len(self._uids) > 2 * len(view.pods) + 1024:
            live = {p.uid for p in view.pods.values()}
            self._uids = {k: u for k, u in self._uids.items() if u in live}
        if len(self._digests) > 2 * len(desired) + 1024:
            specs = {id(d.spec) for d in desired}
            self._digests = {k: v for k, v in self._digests.items() if k in specs}
        return view

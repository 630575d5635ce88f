"""What every part of ambient-mesh shares: the config model, SPIFFE identity and
certificates, the HBONE tunnel, the control-plane API, the authorization engine
(mesh.authz: the one policy model and decision of the node proxy, the waypoint and
`ambientctl explain`), telemetry (mesh.telemetry: the one access-log writer and the one
builder of Istio's metric labels, used by both proxies) and the local runtime.

Owns no process of its own and imports none of the component packages
(controller, nodeagent, waypoint, ambientctl, ebpf)."""

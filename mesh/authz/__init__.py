"""One authorization engine for the whole mesh (Istio AuthorizationPolicy semantics).

Pushed policies are compiled once per snapshot (`compile_policies`); the node proxy
evaluates them at L4, the waypoint at L7 and `ambientctl explain` calls the same
`evaluate`, so what explain says is what the proxies decide. Modules:

    principal  SPIFFE ID -> (principal, namespace), the only place it is split
    model      compiled conditions, rules and policies, and how they match
    compile    pushed protobuf -> model; an uncompilable policy becomes a deny-all
    engine     DENY, then ALLOW, then default: the Verdict
    scope      which of a waypoint's policies apply to one of its services
    metrics    the uncompilable policies in force, for each proxy's registry
"""

from mesh.authz.compile import PolicyCompileError, compile_policies, compile_policy
from mesh.authz.engine import Request, Verdict, evaluate
from mesh.authz.metrics import AuthzCollector
from mesh.authz.model import Layer, Operation, Policy, Rule, Source, Target
from mesh.authz.principal import Peer, namespace_of, peer_of
from mesh.authz.scope import applies_to_service

__all__ = [
    "AuthzCollector", "Layer", "Operation", "Peer", "Policy", "PolicyCompileError",
    "Request", "Rule", "Source", "Target", "Verdict", "applies_to_service",
    "compile_policies", "compile_policy", "evaluate", "namespace_of", "peer_of",
]

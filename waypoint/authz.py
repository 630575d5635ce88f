"""L7 authorization at the waypoint: the mesh's one engine (mesh.authz) at layer L7.

The policies are compiled once per snapshot by waypoint.config.build; the pipeline's
authorize stage and `ambientctl explain` both decide with `evaluate` here. The
constructors below build compiled policies by hand (tests); pushed policies always
go through mesh.authz.compile_policies."""

from __future__ import annotations

from collections.abc import Iterable

from mesh.authz import Operation, Policy, Request, Rule, Source, Verdict
from mesh.authz import evaluate as _evaluate
from mesh.authz.model import Action

RequestFacts = Request
AuthzRule = Rule
SourceCondition = Source
OperationCondition = Operation

__all__ = ["AuthzPolicy", "AuthzRule", "OperationCondition", "RequestFacts",
           "SourceCondition", "Verdict", "evaluate"]


def AuthzPolicy(name: str, action: Action, rules: tuple[Rule, ...] = ()) -> Policy:
    """A compiled policy named "namespace/name"."""
    namespace, _, short = name.rpartition("/")
    return Policy(namespace, short, action, rules)


def evaluate(policies: Iterable[Policy], facts: Request) -> Verdict:
    return _evaluate(policies, facts, "L7")

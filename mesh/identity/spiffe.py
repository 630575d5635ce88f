"""SPIFFE IDs of workloads: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.

Parsing follows the SPIFFE ID spec (lowercase trust domain of [a-z0-9.-_], path
segments of [A-Za-z0-9.-_], no empty, '.' or '..' segments), restricted to the
workload shape Istio uses, because authorization policies match on exactly that."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mesh.identity.errors import InvalidSpiffeIdError

DEFAULT_TRUST_DOMAIN = "cluster.local"
_SCHEME = "spiffe://"
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
_MAX_LENGTH = 2048


def validate_trust_domain(trust_domain: str) -> str:
    if not _TRUST_DOMAIN.match(trust_domain):
        raise InvalidSpiffeIdError(
            f"trust domain {trust_domain!r} is invalid: use 1-255 characters of "
            "lowercase letters, digits, '.', '-' and '_' (e.g. cluster.local)"
        )
    return trust_domain


def _validate_segment(value: str, what: str, uri: str) -> None:
    if not value or value in (".", "..") or not _SEGMENT.match(value):
        raise InvalidSpiffeIdError(
            f"SPIFFE ID {uri!r}: {what} {value!r} is invalid: use letters, digits, "
            "'.', '-' and '_' only"
        )


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """The identity of a workload: its trust domain, namespace and service account."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        uri = self.uri
        _validate_segment(self.namespace, "namespace", uri)
        _validate_segment(self.service_account, "service account", uri)

    @property
    def uri(self) -> str:
        return f"{_SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def for_workload(
        cls, namespace: str, service_account: str, trust_domain: str = DEFAULT_TRUST_DOMAIN
    ) -> SpiffeId:
        return cls(trust_domain, namespace, service_account or "default")

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        if len(uri) > _MAX_LENGTH:
            raise InvalidSpiffeIdError(f"SPIFFE ID is longer than {_MAX_LENGTH} characters")
        if not uri.startswith(_SCHEME):
            raise InvalidSpiffeIdError(
                f"{uri!r} is not a SPIFFE ID: it must start with 'spiffe://' "
                "(lowercase), e.g. spiffe://cluster.local/ns/default/sa/default"
            )
        rest = uri[len(_SCHEME):]
        trust_domain, sep, path = rest.partition("/")
        if not sep:
            raise InvalidSpiffeIdError(
                f"SPIFFE ID {uri!r} has no path: a workload ID looks like "
                "spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
            )
        validate_trust_domain(trust_domain)
        if any(c in path for c in "?#%"):
            raise InvalidSpiffeIdError(
                f"SPIFFE ID {uri!r} must not contain a query, fragment or percent-encoding"
            )
        parts = path.split("/")
        if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
            raise InvalidSpiffeIdError(
                f"SPIFFE ID {uri!r} is not a workload ID: its path must be "
                "/ns/<namespace>/sa/<service-account>"
            )
        return cls(trust_domain, parts[1], parts[3])

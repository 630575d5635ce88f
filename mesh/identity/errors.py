"""Typed errors of the identity package; each message says what to do about it."""


class IdentityError(Exception):
    """Base class of every identity, CA and certificate error."""


class InvalidSpiffeIdError(IdentityError, ValueError):
    """A string is not a SPIFFE ID of the form spiffe://<td>/ns/<ns>/sa/<sa>."""


class CertificateError(IdentityError):
    """A certificate, key, CSR or bundle is malformed or does not fit its use."""


class CaError(IdentityError):
    """The certificate authority cannot load, persist, sign or rotate."""


class NodeAuthError(IdentityError):
    """A node's bootstrap token is missing or does not match its node name."""


class CertificateRefusedError(IdentityError):
    """The CA refused to issue a certificate; retrying the same request will not help."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class CaUnavailableError(IdentityError):
    """The CA could not be reached or failed transiently; retry with backoff."""

"""Workload certificates of the pods on this node: one per identity in use.

Keys are generated here and never leave the node agent; only CSRs go to the CA.
Each certificate is renewed at half-life; on failure it is retried with exponential
backoff and kept in use for as long as it is still valid (the CA may be down).
A renewal swaps an immutable bundle of (key, chain, TLS contexts) in one assignment,
so new connections use it at once and established ones are left alone."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

import anyio
import anyio.abc
import structlog

from mesh.backoff import Backoff
from mesh.hbone.client import StaticTls
from mesh.identity import tls
from mesh.identity.bundle import TrustBundle
from mesh.identity.ca_client import SignedCertificate
from mesh.identity.csr import build_csr, generate_key
from mesh.identity.errors import (
    CaUnavailableError,
    CertificateError,
    CertificateRefusedError,
    IdentityError,
)
from mesh.identity.spiffe import SpiffeId
from mesh.identity.svid import CertifiedKey, load_pem_chain

log = structlog.get_logger(__name__)

Clock = Callable[[], dt.datetime]


class CertificateUnavailableError(IdentityError):
    """No valid certificate for an identity (never issued, or expired while the CA was
    unreachable); connections for it cannot be made until the CA answers again."""


class CertificateSource(Protocol):
    """The CA as the manager needs it (CertificateClient implements it)."""

    async def create_certificate(self, csr_pem: bytes, namespace: str, pod: str,
                                 validity: dt.timedelta | None = None
                                 ) -> SignedCertificate: ...


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    service_account: str


@dataclass(frozen=True)
class Material:
    """Everything derived from one issued certificate; replaced as a whole.

    The TLS contexts are built on first use: each holds the key, chain and trust
    bundle in OpenSSL (~30 KB), and most pods only ever need one of the two (a
    server gets inbound HBONE, a client dials out), many neither for long stretches."""

    certified_key: CertifiedKey
    bundle: TrustBundle

    def __post_init__(self) -> None:
        if self.certified_key.identity.trust_domain != self.bundle.trust_domain:
            raise CertificateError(
                f"certificate for {self.certified_key.identity} does not belong to trust "
                f"domain {self.bundle.trust_domain} of the bundle")

    @functools.cached_property
    def client_context(self) -> ssl.SSLContext:
        return tls.client_context(self.certified_key, self.bundle)

    @functools.cached_property
    def server_context(self) -> ssl.SSLContext:
        return tls.server_context(self.certified_key, self.bundle)


@dataclass
class _IdentityState:
    pods: set[PodRef] = field(default_factory=set)
    material: Material | None = None
    failures: int = 0
    issued: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class CertificateStatus:
    identity: str
    serial: str | None
    not_after: dt.datetime | None
    renew_at: dt.datetime | None
    failures: int
    last_error: str | None
    pods: tuple[str, ...]


def renewal_delay(not_before: dt.datetime, not_after: dt.datetime, now: dt.datetime,
                  failures: int, backoff: Backoff) -> float:
    """Seconds until the next attempt: half-life when healthy, else `backoff`'s delay
    for this many failures (jittered, so many agents don't retry in lockstep), never
    past the point where less than one backoff step of validity would remain."""
    if failures <= 0:
        renew_at = not_before + (not_after - not_before) / 2
        return max(0.0, (renew_at - now).total_seconds())
    delay = backoff.delay(failures - 1)
    remaining = (not_after - now).total_seconds()
    if remaining > 0:
        delay = min(delay, max(backoff.initial, remaining / 4))
    return max(0.0, delay)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def obtain_all(certs: CertificateManager, pods: Iterable[PodRef]) -> dict[PodRef, str]:
    """First certificates for many pods at once (one unreachable CA costs one timeout,
    not one per pod). Returns why each pod that has none could not get it; such a
    pod is still captured, and its connections refused until it has one."""
    refs = list(pods)
    results = await asyncio.gather(*(certs.add_pod(ref) for ref in refs),
                                   return_exceptions=True)
    failed: dict[PodRef, str] = {}
    for ref, result in zip(refs, results, strict=True):
        if isinstance(result, asyncio.CancelledError):
            raise result
        if isinstance(result, BaseException):
            failed[ref] = f"{type(result).__name__}: {result}"
            log.debug("certificate.pending", pod=f"{ref.namespace}/{ref.name}",
                      error=str(result))
    return failed


def log_waiting(before: Mapping[str, str], after: Mapping[str, str]) -> None:
    """Say so once when a pod starts waiting for its certificate, and when it stops."""
    for pod in sorted(after.keys() - before.keys()):
        log.warning("certificate.pending", pod=pod, error=after[pod],
                    effect="captured; its connections are refused until it is issued")
    for pod in sorted(before.keys() - after.keys()):
        log.info("certificate.pending_over", pod=pod)


class CertificateManager:
    """Use as `async with CertificateManager(...) as certs:`; renewals run in its task
    group and stop when the block exits."""

    def __init__(self, source: CertificateSource, trust_domain: str, *,
                 validity: dt.timedelta | None = None, min_backoff: float = 1.0,
                 max_backoff: float = 60.0, clock: Clock = _utc_now) -> None:
        self._source = source
        self.trust_domain = trust_domain
        self._validity = validity
        # Up to 20% shorter than the base, so agents restarted together spread out.
        self._backoff = Backoff(initial=min_backoff, maximum=max_backoff, jitter=0.2)
        self._clock = clock
        self._states: dict[SpiffeId, _IdentityState] = {}
        self._bundle: TrustBundle | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self.renewals = 0
        self.renewal_failures = 0

    async def __aenter__(self) -> CertificateManager:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(exc_type, exc, tb)

    # ---- pods in, identities out -------------------------------------------------------

    def identity_of(self, pod: PodRef) -> SpiffeId:
        return SpiffeId(self.trust_domain, pod.namespace, pod.service_account or "default")

    async def add_pod(self, pod: PodRef) -> CertifiedKey:
        """Make sure the pod's identity has a certificate; returns it (waits for the
        first issuance). Raises CertificateRefusedError / CaUnavailableError if the
        first certificate cannot be obtained."""
        if self._tg is None:
            raise RuntimeError("use the CertificateManager inside `async with`")
        identity = self.identity_of(pod)
        state = self._states.get(identity)
        if state is None:
            state = self._states[identity] = _IdentityState()
            state.pods.add(pod)
            try:
                await self._issue(identity, state)
            except BaseException:
                # Forgotten whole, even if other pods of this identity wait on it: they
                # get the error too, and the next attempt starts afresh (a state kept
                # with no certificate and no renewal loop would never be retried).
                if self._states.get(identity) is state:
                    del self._states[identity]
                state.issued.set()
                raise
            state.issued.set()
            self._tg.start_soon(self._renew_loop, identity, state)
        else:
            state.pods.add(pod)
            await state.issued.wait()
        material = state.material
        if material is None:
            raise CertificateUnavailableError(f"no certificate for {identity}: "
                                              f"{state.last_error or 'not issued'}")
        return material.certified_key

    def remove_pod(self, pod: PodRef) -> None:
        """Forget the pod; the identity's key and certificate go with its last pod."""
        identity = self.identity_of(pod)
        state = self._states.get(identity)
        if state is None:
            return
        state.pods.discard(pod)
        if not state.pods:
            del self._states[identity]
            if state.scope is not None:
                state.scope.cancel()

    # ---- what the proxy uses --------------------------------------------------------------

    def material(self, identity: SpiffeId) -> Material:
        state = self._states.get(identity)
        material = state.material if state is not None else None
        if material is None or not material.certified_key.is_valid_at(self._clock()):
            reason = state.last_error if state is not None else "no pod of it on this node"
            raise CertificateUnavailableError(f"no valid certificate for {identity} "
                                              f"({reason})")
        return material

    def certificate_error(self, identity: SpiffeId) -> str | None:
        """Why no valid certificate is held for `identity` (None: one is). The proxy
        refuses a captured pod's connections while this is not None."""
        try:
            self.material(identity)
        except CertificateUnavailableError as e:
            return str(e)
        return None

    def client_tls(self, identity: SpiffeId) -> StaticTls:
        """A TlsSource for the HBONE pool; its context follows renewals."""
        return StaticTls(identity.uri, lambda: self.material(identity).client_context)

    def server_context_provider(self, identity: SpiffeId) -> Callable[[], ssl.SSLContext]:
        """For HboneServer: evaluated per accepted connection, so it follows renewals."""
        return lambda: self.material(identity).server_context

    @property
    def trust_bundle(self) -> TrustBundle | None:
        return self._bundle

    def status(self) -> list[CertificateStatus]:
        out = []
        for identity, state in sorted(self._states.items(), key=lambda kv: str(kv[0])):
            ck = state.material.certified_key if state.material else None
            out.append(CertificateStatus(
                identity=str(identity), serial=f"{ck.serial:x}" if ck else None,
                not_after=ck.not_after if ck else None, renew_at=ck.renew_at() if ck else None,
                failures=state.failures, last_error=state.last_error,
                pods=tuple(sorted(f"{p.namespace}/{p.name}" for p in state.pods))))
        return out

    # ---- issuing and renewing -------------------------------------------------------------

    async def _issue(self, identity: SpiffeId, state: _IdentityState) -> None:
        key = generate_key()
        csr = build_csr(key, identity)
        error: Exception | None = None
        for pod in sorted(state.pods, key=lambda p: p.name):
            try:
                signed = await self._source.create_certificate(
                    csr, pod.namespace, pod.name, self._validity)
            except CertificateRefusedError as exc:
                error = exc  # perhaps this pod moved away; another pod may still be ours
                continue
            ck = CertifiedKey(key, load_pem_chain(signed.chain_pem))
            if ck.identity != identity:
                raise CertificateError(f"the CA signed {ck.identity} instead of {identity}")
            self._install(identity, state, ck, signed.bundle)
            return
        raise error or CertificateUnavailableError(f"no pod left for {identity}")

    def _install(self, identity: SpiffeId, state: _IdentityState, ck: CertifiedKey,
                 bundle: TrustBundle) -> None:
        bundle_changed = self._bundle is None or \
            self._bundle.fingerprints() != bundle.fingerprints()
        self._bundle = bundle
        state.material = Material(ck, bundle)
        state.failures = 0
        state.last_error = None
        log.info("certificate.installed", identity=str(identity), serial=f"{ck.serial:x}",
                 not_after=ck.not_after.isoformat(), renew_at=ck.renew_at().isoformat())
        if bundle_changed:
            # A root rotation: every identity must trust the new bundle now, not at its
            # own next renewal.
            for other_id, other in self._states.items():
                m = other.material
                if other is not state and m is not None:
                    other.material = Material(m.certified_key, bundle)
                    log.info("certificate.bundle_updated", identity=str(other_id),
                             roots=len(bundle.roots))

    async def _renew_loop(self, identity: SpiffeId, state: _IdentityState) -> None:
        with anyio.CancelScope() as scope:
            state.scope = scope
            while self._states.get(identity) is state:
                material = state.material
                now = self._clock()
                if material is None:
                    delay = renewal_delay(now, now, now, max(state.failures, 1),
                                          self._backoff)
                else:
                    ck = material.certified_key
                    delay = renewal_delay(ck.not_before, ck.not_after, now, state.failures,
                                          self._backoff)
                await anyio.sleep(delay)
                try:
                    await self._issue(identity, state)
                    self.renewals += 1
                except (CaUnavailableError, CertificateRefusedError, CertificateError,
                        CertificateUnavailableError) as exc:
                    self.renewal_failures += 1
                    state.failures += 1
                    state.last_error = str(exc)
                    still_valid = state.material is not None and \
                        state.material.certified_key.is_valid_at(self._clock())
                    log.warning("certificate.renewal_failed", identity=str(identity),
                                failures=state.failures, error=str(exc),
                                keeping_current=still_valid)
                    if not still_valid and state.material is not None:
                        log.error("certificate.expired", identity=str(identity))
                        state.material = None

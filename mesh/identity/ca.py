"""The mesh certificate authority: owns the roots, signs workload SVIDs, rotates roots.

Root rotation is two-phase so that no connection fails while it happens:
  1. the new root joins the trust bundle at once but does not sign yet; every node
     agent picks the new bundle up at its next renewal (at most one lifetime later);
  2. after `propagation` the new root signs, and the old root stays trusted until
     every certificate it signed has expired (`overlap`), then leaves the bundle.

State lives in `<state_dir>/` : roots.json (which root signs when, which is trusted
until when), one PEM per root and its key (0600), and trust-bundle.pem, rewritten on
every change, which is how the bundle is published to anything that reads files."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.identity.bundle import TrustBundle
from mesh.identity.csr import generate_key, load_csr, requested_uris
from mesh.identity.errors import CaError, CertificateError
from mesh.identity.spiffe import DEFAULT_TRUST_DOMAIN, SpiffeId, validate_trust_domain
from mesh.identity.svid import chain_to_pem, load_pem_chain

log = structlog.get_logger(__name__)

Clock = Callable[[], dt.datetime]
DEFAULT_TTL = dt.timedelta(hours=24)
DEFAULT_ROOT_TTL = dt.timedelta(days=3650)
MIN_TTL = dt.timedelta(seconds=1)
MAX_BACKDATE = dt.timedelta(minutes=5)
STATE_FILE = "roots.json"
BUNDLE_FILE = "trust-bundle.pem"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class SigningAuthority:
    """A CA certificate with its key; `chain` runs from it up to the self-signed root."""

    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]
    cert_file: Path
    key_file: Path
    external: bool

    @property
    def cert(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def anchor(self) -> x509.Certificate:
        return self.chain[-1]

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """What a leaf's chain must carry: everything except the trust anchor."""
        return self.chain[:-1]


@dataclass(frozen=True)
class RootEntry:
    authority: SigningAuthority
    signing_from: dt.datetime
    trusted_until: dt.datetime | None


@dataclass(frozen=True)
class IssuedCertificate:
    chain_pem: bytes
    bundle_pem: bytes
    identity: SpiffeId
    serial: int
    not_after: dt.datetime


@dataclass(frozen=True)
class RootStatus:
    subject: str
    fingerprint_sha256: str
    not_after: dt.datetime
    signing: bool
    signing_from: dt.datetime
    trusted_until: dt.datetime | None


def _write_private(path: Path, data: bytes) -> None:
    """Create-or-replace with mode 0600 from the first byte (never briefly world-readable)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def _load_key(path: Path, *, fix_mode: bool) -> ec.EllipticCurvePrivateKey:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except OSError as exc:
        raise CaError(f"cannot read CA key {path}: {exc.strerror}") from None
    if mode & 0o077:
        if fix_mode:
            log.warning("ca.key_mode_fixed", path=str(path), mode=oct(mode))
            path.chmod(0o600)
        else:
            log.warning("ca.key_readable_by_others", path=str(path), mode=oct(mode),
                        hint=f"chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CaError(f"cannot parse CA key {path}: {exc} (an unencrypted PEM key is needed)")\
            from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"CA key {path} is not an ECDSA key; use an ECDSA P-256 key")
    return key


def _check_authority(chain: tuple[x509.Certificate, ...], key: ec.EllipticCurvePrivateKey,
                     source: str) -> None:
    if chain[0].public_key() != key.public_key():
        raise CaError(f"{source}: the CA certificate does not match its key")
    for cert in chain:
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise CaError(f"{source}: {cert.subject.rfc4514_string()} is not a CA certificate "
                          "(basicConstraints CA:TRUE is required)")
    for child, parent in itertools.pairwise(chain):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CaError(f"{source}: {child.subject.rfc4514_string()} is not signed by "
                          f"{parent.subject.rfc4514_string()}: {exc}") from None
    anchor = chain[-1]
    if anchor.issuer != anchor.subject:
        raise CaError(f"{source}: the chain must end with its self-signed root; append the "
                      "root certificate to the certificate file")


def load_authority(cert_file: Path, key_file: Path, *, external: bool) -> SigningAuthority:
    try:
        chain = load_pem_chain(cert_file.read_bytes())
    except OSError as exc:
        raise CaError(f"cannot read CA certificate {cert_file}: {exc.strerror}") from None
    except CertificateError as exc:
        raise CaError(f"CA certificate {cert_file}: {exc}") from None
    key = _load_key(key_file, fix_mode=not external)
    _check_authority(chain, key, str(cert_file))
    return SigningAuthority(key, chain, cert_file, key_file, external)


def generate_root(trust_domain: str, now: dt.datetime, ttl: dt.timedelta
                  ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = generate_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ambient-mesh"),
        x509.NameAttribute(NameOID.COMMON_NAME,
                           f"ambient-mesh root {now:%Y%m%dT%H%M%S} {trust_domain}"[:64]),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


class CertificateAuthority:
    """Signs SVIDs for a trust domain and keeps the set of trusted roots.

    Callers decide *who* may get an identity (the controller's certificate service
    checks pod placement); this class only makes sure what it signs is a well-formed
    SVID for the identity it was told."""

    def __init__(self, trust_domain: str, state_dir: Path, entries: list[RootEntry], *,
                 default_ttl: dt.timedelta = DEFAULT_TTL,
                 max_ttl: dt.timedelta | None = None,
                 root_ttl: dt.timedelta = DEFAULT_ROOT_TTL,
                 clock: Clock = utc_now) -> None:
        validate_trust_domain(trust_domain)
        if default_ttl < MIN_TTL:
            raise CaError(f"certificate lifetime {default_ttl} is shorter than {MIN_TTL}")
        if not entries:
            raise CaError("a CA needs at least one root")
        self.trust_domain = trust_domain
        self.state_dir = state_dir
        self.default_ttl = default_ttl
        self.max_ttl = max(max_ttl or default_ttl, default_ttl)
        self.root_ttl = root_ttl
        self._clock = clock
        self._entries = sorted(entries, key=lambda e: e.signing_from)

    # ---- construction -------------------------------------------------------------

    @classmethod
    def load_or_create(cls, state_dir: Path, trust_domain: str = DEFAULT_TRUST_DOMAIN, *,
                       root_cert_file: Path | None = None, root_key_file: Path | None = None,
                       default_ttl: dt.timedelta = DEFAULT_TTL,
                       max_ttl: dt.timedelta | None = None,
                       root_ttl: dt.timedelta = DEFAULT_ROOT_TTL,
                       clock: Clock = utc_now) -> CertificateAuthority:
        """Load the CA from `state_dir`, or create it there.

        With `root_cert_file`/`root_key_file` (operator-supplied; the cert file may hold
        an intermediate followed by its chain up to the root) that authority signs; a
        different previously persisted signer stays trusted for `max_ttl` so the
        certificates it issued keep verifying."""
        if (root_cert_file is None) != (root_key_file is None):
            raise CaError("give both the CA certificate file and the CA key file, or neither")
        state_dir.mkdir(parents=True, exist_ok=True)
        state_dir.chmod(0o700)
        common = {"default_ttl": default_ttl, "max_ttl": max_ttl, "root_ttl": root_ttl,
                  "clock": clock}
        entries = cls._read_state(state_dir)
        now = clock()
        if root_cert_file is not None and root_key_file is not None:
            operator = load_authority(root_cert_file.resolve(), root_key_file.resolve(),
                                      external=True)
            if not entries:
                entries = [RootEntry(operator, now - dt.timedelta(minutes=5), None)]
                ca = cls(trust_domain, state_dir, entries, **common)  # type: ignore[arg-type]
            else:
                ca = cls(trust_domain, state_dir, entries, **common)  # type: ignore[arg-type]
                if ca.signing_authority().cert != operator.cert:
                    ca.rotate(new_authority=operator, propagation=dt.timedelta(0))
            ca._save()
            return ca
        if entries:
            ca = cls(trust_domain, state_dir, entries, **common)  # type: ignore[arg-type]
            ca._publish_bundle()
            return ca
        authority = cls._generate_authority(state_dir, trust_domain, now, root_ttl)
        ca = cls(trust_domain, state_dir, [RootEntry(authority, now - dt.timedelta(minutes=5),
                                                     None)], **common)  # type: ignore[arg-type]
        ca._save()
        log.info("ca.root_generated", trust_domain=trust_domain,
                 fingerprint=authority.cert.fingerprint(hashes.SHA256()).hex(),
                 state_dir=str(state_dir))
        return ca

    @staticmethod
    def _generate_authority(state_dir: Path, trust_domain: str, now: dt.datetime,
                            ttl: dt.timedelta) -> SigningAuthority:
        key, cert = generate_root(trust_domain, now, ttl)
        stem = f"root-{cert.serial_number:x}"[:40]
        cert_file, key_file = state_dir / f"{stem}.pem", state_dir / f"{stem}.key"
        _write_private(key_file, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        _write_public(cert_file, cert.public_bytes(serialization.Encoding.PEM))
        return SigningAuthority(key, (cert,), cert_file, key_file, external=False)

    @staticmethod
    def _read_state(state_dir: Path) -> list[RootEntry]:
        path = state_dir / STATE_FILE
        if not path.exists():
            return []
        try:
            raw = json.loads(path.read_text())
            entries = []
            for item in raw["roots"]:
                external = bool(item.get("external", False))
                authority = load_authority(state_dir / item["cert"], state_dir / item["key"],
                                           external=external)
                until = item.get("trusted_until")
                entries.append(RootEntry(
                    authority, dt.datetime.fromisoformat(item["signing_from"]),
                    dt.datetime.fromisoformat(until) if until else None))
        except (ValueError, KeyError, TypeError) as exc:
            raise CaError(f"{path} is corrupt ({exc}); restore it from a backup or move the "
                          "state directory aside to start a new CA (all workloads will then "
                          "need new certificates)") from None
        return entries

    def _save(self) -> None:
        def rel(p: Path, external: bool) -> str:
            return str(p) if external else p.name
        doc = {"trust_domain": self.trust_domain, "roots": [
            {"cert": rel(e.authority.cert_file, e.authority.external),
             "key": rel(e.authority.key_file, e.authority.external),
             "external": e.authority.external,
             "signing_from": e.signing_from.isoformat(),
             "trusted_until": e.trusted_until.isoformat() if e.trusted_until else None}
            for e in self._entries]}
        _write_public(self.state_dir / STATE_FILE, json.dumps(doc, indent=2).encode())
        self._publish_bundle()

    def _publish_bundle(self) -> None:
        _write_public(self.state_dir / BUNDLE_FILE, self.trust_bundle().to_pem())

    # ---- queries ------------------------------------------------------------------

    def _active_entries(self, now: dt.datetime) -> list[RootEntry]:
        return [e for e in self._entries
                if (e.trusted_until is None or now < e.trusted_until)
                and e.authority.anchor.not_valid_after_utc > now]

    def signing_authority(self) -> SigningAuthority:
        now = self._clock()
        current = [e for e in self._active_entries(now) if e.signing_from <= now]
        if not current:
            raise CaError("no CA root is valid and active now; rotate to a new root "
                          "(the previous ones have expired)")
        return current[-1].authority

    def trust_bundle(self) -> TrustBundle:
        """Every root trusted now, newest first; old and new together during an overlap."""
        now = self._clock()
        anchors: list[x509.Certificate] = []
        for e in reversed(self._active_entries(now)):
            if e.authority.anchor not in anchors:
                anchors.append(e.authority.anchor)
        return TrustBundle(self.trust_domain, tuple(anchors))

    def roots(self) -> tuple[RootStatus, ...]:
        now = self._clock()
        signer = self.signing_authority()
        return tuple(RootStatus(
            subject=e.authority.cert.subject.rfc4514_string(),
            fingerprint_sha256=e.authority.cert.fingerprint(hashes.SHA256()).hex(),
            not_after=e.authority.cert.not_valid_after_utc,
            signing=e.authority is signer,
            signing_from=e.signing_from, trusted_until=e.trusted_until)
            for e in self._active_entries(now))

    # ---- issuing ------------------------------------------------------------------

    def issue(self, csr_pem: bytes, identity: SpiffeId,
              ttl: dt.timedelta | None = None) -> IssuedCertificate:
        """Sign `identity` for the CSR's key. The CSR may name no URI or exactly this one.

        The lifetime is `ttl` (default lifetime when None) clamped to [1 s, max_ttl]
        and to the signing certificate's own expiry."""
        if identity.trust_domain != self.trust_domain:
            raise CertificateError(f"identity {identity} is outside trust domain "
                                   f"{self.trust_domain}")
        csr = load_csr(csr_pem)
        uris = requested_uris(csr)
        if uris and uris != [identity.uri]:
            raise CertificateError(f"the CSR asks for {', '.join(uris)} but the identity to "
                                   f"sign is {identity}; build the CSR for {identity}")
        lifetime = min(max(ttl if ttl is not None else self.default_ttl, MIN_TTL), self.max_ttl)
        authority = self.signing_authority()
        now = self._clock()
        not_before = now - min(MAX_BACKDATE, lifetime / 10)
        not_after = min(now + lifetime, authority.cert.not_valid_after_utc)
        issuer_ski = authority.cert.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier).value if _has_ski(authority.cert) else None
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(authority.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(identity.uri)]), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()),
                           critical=False)
        )
        if issuer_ski is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
                critical=False)
        else:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
                critical=False)
        leaf = builder.sign(authority.key, hashes.SHA256())
        return IssuedCertificate(
            chain_pem=chain_to_pem((leaf, *authority.intermediates)),
            bundle_pem=self.trust_bundle().to_pem(),
            identity=identity, serial=leaf.serial_number, not_after=not_after)

    # ---- rotation -----------------------------------------------------------------

    def rotate(self, *, propagation: dt.timedelta | None = None,
               overlap: dt.timedelta | None = None,
               new_authority: SigningAuthority | None = None) -> x509.Certificate:
        """Start a root rotation; returns the new signing CA certificate.

        The new root is trusted now and signs from now + `propagation` (default: the
        maximum certificate lifetime, by which time every node agent has renewed and so
        holds the new bundle). The old root stays trusted for `overlap` from now
        (default and minimum: propagation + max lifetime, so all it signed has expired
        before it leaves the bundle)."""
        now = self._clock()
        propagation = self.max_ttl if propagation is None else propagation
        minimum = propagation + self.max_ttl
        overlap = minimum if overlap is None else overlap
        if overlap < minimum:
            raise CaError(f"overlap {overlap} is too short: certificates signed by the old root "
                          f"just before the switch live until {minimum} from now; use an "
                          f"overlap of at least {minimum}")
        old = self.signing_authority()
        if new_authority is None:
            new_authority = self._generate_authority(self.state_dir, self.trust_domain, now,
                                                     self.root_ttl)
        switch = now + propagation
        until = now + overlap
        entries = []
        for e in self._active_entries(now):
            if e.signing_from > now:
                continue  # a pending rotation is superseded; its root never signed anything
            if e.authority is old or e.trusted_until is None:
                e = replace(e, trusted_until=until)
            entries.append(e)
        entries.append(RootEntry(new_authority, switch, None))
        self._entries = sorted(entries, key=lambda e: e.signing_from)
        self._save()
        log.info("ca.root_rotation_started", trust_domain=self.trust_domain,
                 new_fingerprint=new_authority.cert.fingerprint(hashes.SHA256()).hex(),
                 old_fingerprint=old.cert.fingerprint(hashes.SHA256()).hex(),
                 signs_from=switch.isoformat(), old_trusted_until=until.isoformat())
        return new_authority.cert


def _has_ski(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return False
    return True

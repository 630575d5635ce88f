import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mesh.identity.ca import CertificateAuthority, generate_root
from mesh.identity.csr import build_csr, generate_key
from mesh.identity.errors import CaError, CertificateError
from mesh.identity.spiffe import SpiffeId
from mesh.identity.svid import CertifiedKey, load_pem_chain, spiffe_id_of
from tests.identity_helpers import ManualClock, mint, new_ca

WEB = SpiffeId.for_workload("web", "frontend")


def test_generated_root_persisted_with_private_key_0600(tmp_path: Path) -> None:
    ca = new_ca(tmp_path / "ca")
    keys = list((tmp_path / "ca").glob("*.key"))
    assert len(keys) == 1
    assert stat.S_IMODE(os.stat(keys[0]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "ca").st_mode) == 0o700
    published = (tmp_path / "ca" / "trust-bundle.pem").read_bytes()
    assert published == ca.trust_bundle().to_pem()
    again = new_ca(tmp_path / "ca")
    assert again.trust_bundle().fingerprints() == ca.trust_bundle().fingerprints()


def test_issue_svid_shape(tmp_path: Path) -> None:
    ca = new_ca(tmp_path)
    ck, bundle = mint(ca, WEB)
    leaf = ck.leaf
    assert spiffe_id_of(leaf) == WEB
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert leaf.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    lifetime = ck.not_after - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=23, minutes=59) < lifetime <= dt.timedelta(hours=24)
    leaf.verify_directly_issued_by(bundle.roots[0])


def test_lifetime_configurable_and_clamped(tmp_path: Path) -> None:
    ca = new_ca(tmp_path, default_ttl=dt.timedelta(seconds=10))
    ck, _ = mint(ca, WEB)
    assert (ck.not_after - dt.datetime.now(dt.UTC)) <= dt.timedelta(seconds=10)
    long, _ = mint(ca, WEB, dt.timedelta(days=30))
    assert (long.not_after - dt.datetime.now(dt.UTC)) <= dt.timedelta(seconds=10)
    # half-life renewal point sits half way through the validity
    mid = ck.not_before + (ck.not_after - ck.not_before) / 2
    assert ck.renew_at() == mid


def test_csr_naming_another_identity_is_refused(tmp_path: Path) -> None:
    ca = new_ca(tmp_path)
    key = generate_key()
    csr = build_csr(key, SpiffeId.for_workload("kube-system", "admin"))
    with pytest.raises(CertificateError, match=r"asks for spiffe://cluster\.local/ns/kube-system"):
        ca.issue(csr, WEB)


def test_csr_garbage_and_wrong_curve_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    ca = new_ca(tmp_path)
    with pytest.raises(CertificateError, match="cannot parse"):
        ca.issue(b"not a csr", WEB)
    key = ec.generate_private_key(ec.SECP384R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CertificateError, match="P-256"):
        ca.issue(csr, WEB)


def test_other_trust_domain_refused(tmp_path: Path) -> None:
    ca = new_ca(tmp_path)
    with pytest.raises(CertificateError, match="outside trust domain"):
        mint(ca, SpiffeId("example.org", "web", "frontend"))


def test_operator_supplied_intermediate(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    now = dt.datetime.now(dt.UTC)
    root_key, root = generate_root("cluster.local", now, dt.timedelta(days=10))
    ikey = generate_key()
    iname = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator intermediate")])
    inter = (x509.CertificateBuilder().subject_name(iname).issuer_name(root.subject)
             .public_key(ikey.public_key()).serial_number(7)
             .not_valid_before(now - dt.timedelta(minutes=1))
             .not_valid_after(now + dt.timedelta(days=5))
             .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(ikey.public_key()),
                            critical=False)
             .sign(root_key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "ca-chain.pem", tmp_path / "ca-key.pem"
    cert_file.write_bytes(inter.public_bytes(serialization.Encoding.PEM)
                          + root.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(ikey.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    key_file.chmod(0o600)
    ca = CertificateAuthority.load_or_create(tmp_path / "state", root_cert_file=cert_file,
                                             root_key_file=key_file)
    ck, bundle = mint(ca, WEB)
    assert bundle.roots == (root,)
    assert ck.chain[1] == inter
    # the operator's key is referenced, never copied into the state dir
    assert not list((tmp_path / "state").glob("*.key"))
    # a chain that does not end at a self-signed root is rejected with a hint
    cert_file.write_bytes(inter.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CaError, match="self-signed root"):
        CertificateAuthority.load_or_create(tmp_path / "s2", root_cert_file=cert_file,
                                            root_key_file=key_file)


def test_mismatched_operator_key_rejected(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    _, root = generate_root("cluster.local", now, dt.timedelta(days=1))
    other = generate_key()
    (tmp_path / "c.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(CaError, match="does not match its key"):
        CertificateAuthority.load_or_create(tmp_path / "s", root_cert_file=tmp_path / "c.pem",
                                            root_key_file=tmp_path / "k.pem")


def test_rotation_two_phase_with_overlap(tmp_path: Path) -> None:
    clock = ManualClock()
    ttl = dt.timedelta(hours=1)
    ca = new_ca(tmp_path, default_ttl=ttl, clock=clock)
    old_root = ca.trust_bundle().roots[0]
    before, _ = mint(ca, WEB)
    new_root = ca.rotate()
    # phase 1: both trusted, old still signs
    assert ca.trust_bundle().roots == (new_root, old_root)
    during, _ = mint(ca, WEB)
    during.leaf.verify_directly_issued_by(old_root)
    # phase 2: after propagation (= max lifetime) the new root signs, both trusted
    clock.advance(ttl + dt.timedelta(seconds=1))
    after, bundle = mint(ca, WEB)
    after.leaf.verify_directly_issued_by(new_root)
    assert set(bundle.roots) == {new_root, old_root}
    # the old root leaves only once everything it signed has expired
    assert during.not_after < clock.now + ttl
    clock.advance(ttl)
    assert ca.trust_bundle().roots == (new_root,)
    # state survives a restart
    reloaded = new_ca(tmp_path, default_ttl=ttl, clock=clock)
    assert reloaded.trust_bundle().roots == (new_root,)
    assert reloaded.signing_authority().cert == new_root
    del before


def test_rotation_overlap_too_short_refused(tmp_path: Path) -> None:
    ca = new_ca(tmp_path, default_ttl=dt.timedelta(hours=1))
    with pytest.raises(CaError, match="at least"):
        ca.rotate(propagation=dt.timedelta(0), overlap=dt.timedelta(minutes=10))


def test_certified_key_rejects_mismatched_key(tmp_path: Path) -> None:
    ca = new_ca(tmp_path)
    ck, _ = mint(ca, WEB)
    with pytest.raises(CertificateError, match="does not match the private key"):
        CertifiedKey(generate_key(), ck.chain)
    roundtrip = CertifiedKey.from_pem(ck.key_pem(), ck.chain_pem())
    assert roundtrip.identity == WEB and roundtrip.serial == ck.serial
    assert load_pem_chain(ck.chain_pem()) == ck.chain

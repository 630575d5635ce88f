"""Pieces of ambientctl that need no root: table rows, the process table (with real
processes), the kustomize fallback, certificate description, demo manifests."""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ambientctl import tables
from ambientctl.certinfo import describe, issued_by_bundle
from ambientctl.commands.install import render_base
from ambientctl.demo.manifests import render
from ambientctl.errors import AmbientctlError
from ambientctl.layout import MeshLayout, MeshSettings
from ambientctl.processes import ProcessTable, is_alive
from mesh.config import parse_documents


def test_pod_rows_show_node_ip_and_mesh_membership() -> None:
    pods = [{"metadata": {"namespace": "demo", "name": "a"}, "spec": {"nodeName": "node-1"},
             "status": {"phase": "Running", "podIP": "10.100.1.2"}},
            {"metadata": {"namespace": "legacy", "name": "b"}, "spec": {},
             "status": {"phase": "Pending"}}]
    cols, rows = tables.rows_for(["Pod"], pods, {"demo/a"})
    assert cols == ["NAMESPACE", "NAME", "STATUS", "NODE", "IP", "MESH"]
    assert rows == [["demo", "a", "Running", "node-1", "10.100.1.2", "ambient"],
                    ["legacy", "b", "Pending", "<pending>", "", "-"]]


def test_route_and_policy_rows() -> None:
    route = {"kind": "HTTPRoute", "metadata": {"namespace": "demo", "name": "r"},
             "spec": {"parentRefs": [{"kind": "Service", "name": "catalog", "port": 80}],
                      "rules": [{"backendRefs": [{"name": "v1", "port": 80, "weight": 90},
                                                 {"name": "v2", "port": 80, "weight": 10}]}]}}
    assert tables.rows_for(["HTTPRoute"], [route])[1] == [
        ["demo", "r", "Service/catalog:80", "v1:80 (90), v2:80 (10)"]]
    pol = {"kind": "AuthorizationPolicy", "metadata": {"namespace": "demo", "name": "p"},
           "spec": {"action": "DENY", "selector": {"matchLabels": {"app": "x"}}}}
    pa = {"kind": "PeerAuthentication", "metadata": {"namespace": "demo", "name": "default"},
          "spec": {"mtls": {"mode": "STRICT"}}}
    _, rows = tables.rows_for(list(tables.GROUPS["policies"]), [pol, pa])
    assert rows == [["AuthorizationPolicy", "demo", "p", "DENY", "app=x"],
                    ["PeerAuthentication", "demo", "default", "STRICT", "<namespace>"]]


def test_process_table_starts_stops_and_detects_pid_reuse(tmp_path: Path) -> None:
    layout = MeshLayout("t", tmp_path)
    table = ProcessTable(layout)
    record = table.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert table.alive("sleeper")
        assert layout.log_file("sleeper").exists()
        # A record with the same pid but another start time is someone else's process.
        forged = type(record)("x", record.pid, record.start_time + 1, [])
        assert not is_alive(forged)
        assert table.stop("sleeper", timeout=2)
        assert not is_alive(record)
        assert table.get("sleeper") is None
        assert not table.stop("sleeper")
    finally:
        table.stop("sleeper", timeout=0.5)


def test_restart_if_dead(tmp_path: Path) -> None:
    table = ProcessTable(MeshLayout("t", tmp_path))
    first = table.start("quick", [sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 5
    while is_alive(first) and time.monotonic() < deadline:
        time.sleep(0.05)
    again = table.restart_if_dead("quick")
    assert again is not None and again.argv == first.argv
    table.stop("quick", timeout=1)


def test_settings_round_trip(tmp_path: Path) -> None:
    layout = MeshLayout("t", tmp_path)
    layout.create()
    assert layout.load_settings() is None
    s = MeshSettings("t", ["node-1"], grpc_port=1, admin_port=2)
    layout.save_settings(s)
    assert layout.load_settings() == s


def test_kustomize_fallback(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "namespace: ambient-system\nresources: [ns.yaml, sub]\n")
    (tmp_path / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "kustomization.yaml").write_text("resources: [sa.yaml]\n")
    (tmp_path / "sub" / "sa.yaml").write_text(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n")
    docs = render_base(tmp_path)
    assert [(d["kind"], d["metadata"].get("namespace")) for d in docs] == [
        ("Namespace", None), ("ServiceAccount", "ambient-system")]
    with pytest.raises(AmbientctlError, match="no kustomization"):
        render_base(tmp_path / "sub" / "missing")


def _cert(uri: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ambient-mesh")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(0xABC)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(hours=24))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER), cert.public_bytes(
        serialization.Encoding.PEM)


def test_certificate_description_and_bundle_check(tmp_path: Path) -> None:
    der, pem = _cert("spiffe://cluster.local/ns/demo/sa/frontend")
    info = describe(der)
    assert info["spiffeId"] == "spiffe://cluster.local/ns/demo/sa/frontend"
    assert info["serial"] == "abc" and info["issuer"] == "O=ambient-mesh"
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pem)
    assert issued_by_bundle(der, bundle) is True
    other = tmp_path / "other.pem"
    other.write_bytes(_cert("spiffe://x/ns/a/sa/b")[1])
    assert issued_by_bundle(der, other) is False
    assert issued_by_bundle(der, tmp_path / "missing.pem") is None


def test_demo_manifests_validate_and_use_this_interpreter() -> None:
    files = render("/opt/py/bin/python3")
    kinds = []
    for name, text in files:
        kinds += [d.resource.KIND for d in parse_documents(text, name)]
        for doc in yaml.safe_load_all(text):
            for c in (doc.get("spec", {}).get("template", {}).get("spec", {})
                      .get("containers", [])):
                if "ambientctl.demo" in " ".join(c["command"]):
                    assert c["command"][0] == "/opt/py/bin/python3"
    assert kinds.count("Deployment") == 4 and "HTTPRoute" in kinds and "Gateway" in kinds

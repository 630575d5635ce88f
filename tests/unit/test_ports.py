"""The reserved ports are written once (mesh/ports.py); every component imports them.

A literal 15008 in a second module is how the five copies of HBONE_PORT started: this
test reads the code of every component (integer literals only: prose in docstrings and
messages may name the number) and fails on any copy.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mesh import ports

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("mesh", "ebpf", "nodeagent", "waypoint", "controller", "ambientctl")
RESERVED = {ports.OUTBOUND_PORT, ports.INBOUND_PORT, ports.HBONE_PORT, ports.METRICS_PORT,
            ports.HEALTH_PORT, ports.CONTROLLER_GRPC_PORT, ports.CONTROLLER_ADMIN_PORT}
# An address written out ("127.0.0.1:15012", f"...{ip}:15008"): prose may still name
# a port in parentheses, an address must be built from the constant.
ADDRESS = re.compile(":({})(?![0-9])".format("|".join(str(p) for p in sorted(RESERVED))))
# controller/kube/ (the Kubernetes waypoint Deployment and the controller Service
# address) is owned by another change in flight; it is what is left to port.
NOT_YET_PORTED = {"controller/kube/waypoints.py", "controller/kube/serve.py"}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string statements (module, class, function and attribute docs)."""
    return {id(stmt.value) for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                          | ast.AsyncFunctionDef)
            for stmt in node.body if isinstance(stmt, ast.Expr)
            and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)}


def _literal_copies(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docs = _docstrings(tree)
    return [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and ((type(node.value) is int and node.value in RESERVED)
                 or (isinstance(node.value, str) and id(node) not in docs
                     and ADDRESS.search(node.value)))]


def test_reserved_ports_are_defined_once() -> None:
    copies = []
    for component in COMPONENTS:
        for path in sorted((ROOT / component).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel == "mesh/ports.py" or rel in NOT_YET_PORTED or "_pb2" in path.name:
                continue
            copies += _literal_copies(path)
    assert copies == [], "import the port from mesh.ports instead:\n" + "\n".join(copies)


def test_the_bpf_programs_are_built_with_the_one_definition() -> None:
    from ebpf.layout import render_c_header

    header = render_c_header(Path("/sys/fs/bpf/ambientmesh/c-ports"))
    assert f"#define AM_HBONE_PORT {ports.HBONE_PORT}" in header
    assert f"#define AM_OUTBOUND_PORT {ports.OUTBOUND_PORT}" in header
    assert f"#define AM_INBOUND_PORT {ports.INBOUND_PORT}" in header

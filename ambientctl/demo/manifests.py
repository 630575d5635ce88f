"""The demo's manifests, rendered for this machine: containers run with the same
interpreter as ambientctl (its absolute path), so the demo modules import without
any PATH or PYTHONPATH set up in the pods."""

from __future__ import annotations

import sys
from pathlib import Path
from string import Template

MANIFEST_DIR = Path(__file__).with_name("manifests")


def render(python: str | None = None) -> list[tuple[str, str]]:
    """(file name, YAML text) per manifest, in apply order."""
    interpreter = python or sys.executable
    return [(path.name, Template(path.read_text()).safe_substitute(PYTHON=interpreter))
            for path in sorted(MANIFEST_DIR.glob("*.yaml"))]

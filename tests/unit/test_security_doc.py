"""docs/security.md names, for every fail-closed decision point, the test that proves
it: each named test must exist, so the table cannot silently point at a renamed or
deleted test. `::name` alone refers to the file named last in the same cell."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
REF = re.compile(r"`((?:tests/[\w/]+\.py)?::[\w]+)(?:\[[^\]]*\])?`|`(tests/[\w/]+\.py)`")


def referenced_tests() -> list[tuple[str, str]]:
    refs: list[tuple[str, str]] = []
    for line in DOC.read_text().splitlines():
        if not line.startswith("|"):
            continue
        for cell in line.split("|"):
            current = ""
            for m in REF.finditer(cell):
                ref = m.group(1) or m.group(2)
                path, _, name = ref.partition("::")
                current = path or current
                assert current, f"`::{name}` has no file before it in: {cell.strip()}"
                if name:
                    refs.append((current, name))
    return refs


def test_every_test_named_in_security_md_exists() -> None:
    refs = referenced_tests()
    assert len(refs) > 40, "the decision-point table lost its tests"
    missing = []
    for path, name in refs:
        file = ROOT / path
        if not file.is_file() or not re.search(rf"^(async )?def {name}\(", file.read_text(),
                                                re.MULTILINE):
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"

"""Random invalid fields in every config kind: the loader answers with a ConfigError
that names the file, the object and a field on the path that was broken (never any
other exception), and a refused apply leaves everything already in force untouched.

The seeds are the real manifests users start from (examples/ and the demo), which
together hold every kind."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.configdir import ConfigDirectory
from mesh.config import ConfigError
from mesh.config.loader import KINDS, parse_documents

# make soak (AMBIENT_SOAK=1) runs ten times the examples.
SCALE = 10 if os.environ.get("AMBIENT_SOAK") == "1" else 1

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("ambientctl/demo/manifests/*.yaml")])


def seed_documents() -> list[dict[str, Any]]:
    """One document per object (the examples and the demo share a few names)."""
    docs: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in SOURCES:
        for d in yaml.safe_load_all(path.read_text()):
            if d:
                meta = d.get("metadata") or {}
                docs.setdefault((d["kind"], meta.get("namespace", ""), meta["name"]), d)
    return list(docs.values())


SEEDS = seed_documents()
SEED_TEXT = "\n---\n".join(yaml.safe_dump(d) for d in SEEDS)

BAD_VALUES: list[Any] = [
    None, -1, 0, 10**12, -(10**12), 3.5, True, "", " ", "x" * 300, "not a duration",
    "-5s", "UPPER_case!", "../etc", "spiffe://", "300%", [], {}, [None], {"unknown": 1},
    ["a", 1], "0.0.0.0/99", "2001:db8::/200", "*" * 3, "\x00", "é",
]


def test_the_seeds_cover_every_kind_and_are_valid() -> None:
    assert {d["kind"] for d in SEEDS} == set(KINDS)
    parse_documents(SEED_TEXT, "seeds.yaml")


def paths(node: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every field path below `spec` (and metadata's name fields) of a document."""
    if isinstance(node, dict):
        for k, v in node.items():
            p = (*prefix, k)
            if p[0] in ("spec", "metadata") and p != ("metadata",):
                yield p
            yield from paths(v, p)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            p = (*prefix, i)
            yield p
            yield from paths(v, p)


def set_at(doc: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int) or "/" in part or "." in part:  # as the loader writes it
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@st.composite
def mutations(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[str | int, ...], Any]:
    doc = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    candidates = sorted(paths(doc), key=dotted)
    if draw(st.booleans()) or not candidates:  # an unknown field somewhere
        parents = [p for p in candidates if isinstance(_get(doc, p), dict)] or [("spec",)]
        parent = draw(st.sampled_from(parents)) if "spec" in doc else ("metadata",)
        path = (*parent, draw(st.sampled_from(["bogus", "replicas2", "selectr", "Mode"])))
    else:
        path = draw(st.sampled_from(candidates))
    value = draw(st.sampled_from(BAD_VALUES) | st.integers() | st.text(max_size=20))
    set_at(doc, path, value)
    return doc, path, value


def _get(doc: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def related(issue_path: str, broken: str) -> bool:
    """The issue names the broken field, one of its parents, or one of its children
    (pydantic reports a union or a cross-field rule at the level that decides)."""
    a, b = issue_path.replace("[", ".["), broken.replace("[", ".[")
    return a == b or b.startswith(a + ".") or a.startswith(b + ".")


@settings(max_examples=400 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=mutations())
def test_a_broken_field_is_named_precisely(m: tuple[dict[str, Any], tuple[str | int, ...], Any]
                                           ) -> None:
    doc, path, value = m
    text = yaml.safe_dump(doc, allow_unicode=True)
    try:
        parse_documents(text, "broken.yaml")
    except ConfigError as e:
        broken = dotted(path)
        kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
        for issue in e.issues:
            assert issue.file == "broken.yaml" and issue.document == 1
            assert issue.reason
            assert str(issue).startswith("broken.yaml doc 1")
        # Cross-field rules (selector vs template labels...) name the other field in the
        # reason: the broken key or its parent must then appear there.
        keys = [p for p in path if isinstance(p, str)][-2:]
        assert any(related(i.path, broken) or any(k in i.reason for k in keys)
                   for i in e.issues), \
            f"{broken} = {value!r} reported as {[str(i) for i in e.issues]}"
        if path[0] == "spec" and isinstance(name, str) and name:
            assert all(i.object_ref.startswith(f"{kind} ") and name in i.object_ref
                       for i in e.issues), [str(i) for i in e.issues]
    # else: the value happened to be valid for that field; nothing to check


@settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(
    lambda b: b.decode("latin-1")))
def test_arbitrary_text_is_refused_with_config_error_only(text: str) -> None:
    try:
        parse_documents(text, "noise.yaml")
    except ConfigError as e:
        assert e.issues and all(i.file == "noise.yaml" and i.reason for i in e.issues)


@pytest.fixture(scope="module")
def configdir(tmp_path_factory: pytest.TempPathFactory) -> ConfigDirectory:
    d = ConfigDirectory(tmp_path_factory.mktemp("cfg"))
    d.apply(SEED_TEXT, "seeds.yaml")
    return d


def snapshot(d: ConfigDirectory) -> dict[Any, Any]:
    return {k: doc.resource for k, doc in d.objects().items()}


@settings(max_examples=150 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(m=mutations(), with_valid=st.booleans())
def test_a_refused_apply_keeps_everything_in_force(
        configdir: ConfigDirectory, m: tuple[dict[str, Any], tuple[str | int, ...], Any],
        with_valid: bool) -> None:
    doc, _, _ = m
    before = snapshot(configdir)
    files_before = {p.name: p.read_bytes() for p in configdir.path.iterdir()}
    # A valid new object next to the broken one must not be applied either.
    extra = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fuzz-extra"}}
    text = yaml.safe_dump_all([extra, doc] if with_valid else [doc], allow_unicode=True)
    try:
        changes = configdir.apply(text, "fuzz.yaml")
    except ConfigError:
        assert snapshot(configdir) == before
        assert {p.name: p.read_bytes() for p in configdir.path.iterdir()} == files_before
        return
    # Accepted (the value was valid): undo it so the next example starts from the seeds.
    configdir.delete([c.key for c in changes if c.action == "created"])
    configdir.apply(SEED_TEXT, "seeds.yaml")

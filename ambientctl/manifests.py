"""Reading what `apply -f` and `delete -f` are given: files, directories (every
*.yaml / *.yml, sorted) or `-` for stdin; validated here first, so a typo is
reported before anything reaches the controller."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ambientctl.errors import BadArgument
from mesh.config import Document, parse_documents

SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Manifest:
    name: str
    text: str
    documents: list[Document]


def read_sources(paths: tuple[str, ...]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for raw in paths:
        if raw == "-":
            out.append(("stdin.yaml", sys.stdin.read()))
            continue
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
            if not files:
                raise BadArgument(f"{raw}: no *.yaml or *.yml files in this directory")
            out.extend((f.name, _read(f)) for f in files)
        elif path.is_file():
            out.append((path.name, _read(path)))
        else:
            raise BadArgument(f"{raw}: no such file or directory",
                              "give a YAML file, a directory of them, or - for stdin")
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise BadArgument(f"cannot read {path}: {e}") from None


def load(paths: tuple[str, ...]) -> list[Manifest]:
    """Every source parsed and validated; raises ConfigError naming each problem."""
    return [Manifest(name, text, parse_documents(text, name))
            for name, text in read_sources(paths)]

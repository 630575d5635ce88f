"""Typed configuration errors: every problem names the file, the document, the object
and the field, so a user can fix their YAML without guessing."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in one document.

    `document` is 1-based (the first `---`-separated document is doc 1), `object_ref`
    is "Kind namespace/name" (or "Kind name" for cluster-scoped kinds) when known,
    `path` is the field path inside the document (e.g. spec.rules[0].backendRefs[1].weight).
    """

    file: str
    document: int
    object_ref: str
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file} doc {self.document}"
        if self.object_ref:
            where += f" {self.object_ref}"
        if self.path:
            return f"{where}: {self.path}: {self.reason}"
        return f"{where}: {self.reason}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "document": self.document,
            "object": self.object_ref,
            "path": self.path,
            "reason": self.reason,
            "message": str(self),
        }


class ConfigError(Exception):
    """Input refused as a whole; nothing in it was applied."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues) or "invalid configuration")

    @property
    def first(self) -> ConfigIssue:
        return self.issues[0]

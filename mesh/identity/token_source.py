"""Where a proxy's bearer token comes from, asked again for every call to the controller.

In Kubernetes the token is a projected service-account token: the kubelet rewrites
the file (an atomic symlink swap) at 80 % of its lifetime (default one hour), and the
old token stops being valid when it expires. A proxy that read the file once would be
refused by TokenReview an hour later, on its next certificate renewal or reconnect.
So the CA client and the config subscriber take a `TokenSource`, a function called
for each RPC, and `TokenFile` reads the file each time (a few hundred bytes; far
cheaper than the RPC it authenticates). A plain string still works for tokens that
never change (local mode's derived bootstrap tokens handed over in memory)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mesh.identity.errors import NodeAuthError

TokenSource = Callable[[], str]


class TokenFileError(NodeAuthError):
    """The token file cannot be read or is empty; the message names the file."""


@dataclass(frozen=True)
class TokenFile:
    """A token kept in a file that someone else (the kubelet) rewrites."""

    path: Path

    def __call__(self) -> str:
        try:
            token = self.path.read_text().strip()
        except OSError as e:
            raise TokenFileError(f"cannot read the token file {self.path}: {e.strerror or e}; "
                                 "check the projected serviceAccountToken volume (or "
                                 "--token-file)") from None
        if not token:
            raise TokenFileError(f"the token file {self.path} is empty; the kubelet writes "
                                 "it when the pod starts: check the projected volume")
        return token


def token_source(token: str | TokenSource) -> TokenSource:
    """A source for either a fixed token or a source already."""
    if isinstance(token, str):
        fixed = token
        return lambda: fixed
    return token

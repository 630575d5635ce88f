"""Errors ambientctl reports to a user: each message says what went wrong and what to
do next. The CLI prints them without a traceback and exits with `exit_code`."""

from __future__ import annotations


class AmbientctlError(Exception):
    """Base class. `hint` is the next step for the user, printed after the message."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class NotRoot(AmbientctlError):
    def __init__(self, command: str) -> None:
        super().__init__(
            f"`ambientctl {command}` needs root",
            "the local mesh creates network namespaces, cgroups and eBPF programs, which "
            f"only root may do: run `sudo ambientctl {command}`",
        )


class MeshNotRunning(AmbientctlError):
    def __init__(self, cluster: str) -> None:
        super().__init__(
            f"no local mesh {cluster!r} is running",
            "start one with `sudo ambientctl up` (add `--cluster NAME` if you used one)",
        )


class ControllerUnreachable(AmbientctlError):
    def __init__(self, address: str, detail: str, log_file: str = "") -> None:
        hint = "start the local mesh with `sudo ambientctl up`"
        if log_file:
            hint += f"; if it is already up, read the controller log: {log_file}"
        super().__init__(f"cannot reach the controller admin API at {address}: {detail}", hint)


class ControllerRefused(AmbientctlError):
    """The controller answered with an error (invalid input, unknown object, ...)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message, hint)


class BadArgument(AmbientctlError):
    exit_code = 2


class PodMissing(AmbientctlError):
    def __init__(self, ref: str, known: list[str]) -> None:
        listing = ", ".join(known[:12]) + (" ..." if len(known) > 12 else "")
        super().__init__(
            f"pod {ref} not found",
            f"known pods: {listing}" if known else
            "no pods exist yet: `ambientctl get pods -A` lists them once they run",
        )


class StartupFailed(AmbientctlError):
    def __init__(self, what: str, detail: str, log_file: str = "") -> None:
        hint = f"read {log_file}" if log_file else "run `ambientctl logs` for details"
        super().__init__(f"{what} did not become ready: {detail}",
                         hint + "; `sudo ambientctl down` removes what was started")

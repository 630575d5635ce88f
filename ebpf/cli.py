"""`python -m ebpf`: drive a node's capture by hand, and host it in a process of its
own (`run`), which is how restart safety is exercised: kill it, start another, and
the pinned links keep capturing while the new one takes over."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import structlog

from ebpf.enrollment import EnrolledPod
from ebpf.errors import EbpfError
from ebpf.pins import installed_pin_names
from ebpf.redirector import Redirector, uninstall


def _pod(args: argparse.Namespace) -> EnrolledPod:
    return EnrolledPod(
        name=args.name,
        netns=args.netns,
        cgroup_path=Path(args.cgroup) if args.cgroup else None,
        cgroup_id=args.cgroup_id,
        ips=tuple(args.ip),
        outbound_excluded_ports=tuple(args.exclude_outbound),
        inbound_excluded_ports=tuple(args.exclude_inbound),
    )


def _run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    redirector = Redirector.load(args.pin_name, Path(args.cgroup))
    try:
        print(json.dumps({"ready": True, "adopted": redirector.adopted}), flush=True)
        stop.wait()
    finally:
        redirector.close()
    return 0


def _status(args: argparse.Namespace) -> int:
    with Redirector.open(args.pin_name) as redirector:
        status = redirector.status()
    print(json.dumps(status, indent=2))
    return 0 if status["healthy"] else 1


def _enroll(args: argparse.Namespace) -> int:
    with Redirector.open(args.pin_name) as redirector:
        redirector.enroll(_pod(args))
    return 0


def _unenroll(args: argparse.Namespace) -> int:
    with Redirector.open(args.pin_name) as redirector:
        redirector.unenroll(_pod(args))
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    removed = uninstall(args.pin_name)
    print(json.dumps({"removed": removed}))
    return 0


def _list(args: argparse.Namespace) -> int:
    print(json.dumps(installed_pin_names()))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ebpf", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="load or adopt, then hold until SIGTERM")
    run.add_argument("--pin-name", required=True)
    run.add_argument("--cgroup", required=True, help="cgroup v2 directory to attach at")
    run.set_defaults(func=_run)

    for name, func, text in (
        ("status", _status, "report programs, links, counts (exit 1 if unhealthy)"),
        ("uninstall", _uninstall, "detach everything and remove every pin"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--pin-name", required=True)
        cmd.set_defaults(func=func)

    for name, func in (("enroll", _enroll), ("unenroll", _unenroll)):
        cmd = sub.add_parser(name, help=f"{name} one pod")
        cmd.add_argument("--pin-name", required=True)
        cmd.add_argument("--name", required=True, help="namespace/pod, for messages")
        cmd.add_argument("--netns", required=True)
        cmd.add_argument("--cgroup")
        cmd.add_argument("--cgroup-id", type=int)
        cmd.add_argument("--ip", action="append", default=[])
        cmd.add_argument("--exclude-outbound", type=int, action="append", default=[])
        cmd.add_argument("--exclude-inbound", type=int, action="append", default=[])
        cmd.set_defaults(func=func)

    lst = sub.add_parser("list", help="installed pin names")
    lst.set_defaults(func=_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # stdout carries the JSON answers; logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except EbpfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

"""Helpers for the eBPF tests: small real programs run inside pods, and a capture
listener played by the test process (as the node proxy would be).

Run as a script (stdlib only) inside a pod:
  ebpf_helpers.py serve IP:PORT...      reply "direct <local ip> <local port>" per connection
  ebpf_helpers.py connect IP:PORT...    connect to all at once; JSON line per connection
  ebpf_helpers.py loop SECONDS IP:PORT  connect repeatedly; JSON summary of the replies
  ebpf_helpers.py lines                 one connection per stdin line "IP PORT"
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HELPER = str(Path(__file__).resolve())


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def fmt_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _exchange(dst: tuple[str, int], timeout: float = 5.0) -> dict[str, Any]:
    """One connection: what the app sees (getpeername) and what answered."""
    s = socket.socket(_family(dst[0]), socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(dst)
        peer = s.getpeername()
        reply = s.makefile("r").readline().strip()
        return {"dst": list(dst), "peer": [peer[0], peer[1]], "reply": reply}
    except OSError as exc:
        return {"dst": list(dst), "error": f"{type(exc).__name__}: {exc}"}
    finally:
        s.close()


def _serve(addrs: list[tuple[str, int]]) -> None:
    listeners = []
    for host, port in addrs:
        s = socket.socket(_family(host), socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if ":" in host:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        s.listen(512)
        listeners.append(s)
    udp = None
    if addrs:  # a UDP echo on the first address, to show UDP is never touched
        udp = socket.socket(_family(addrs[0][0]), socket.SOCK_DGRAM)
        udp.bind(addrs[0])
    print("ready", flush=True)
    watched = [*listeners, *([udp] if udp else [])]
    while True:
        readable, _, _ = select.select(watched, [], [])
        for s in readable:
            if s is udp:
                _data, src = udp.recvfrom(100)
                local = udp.getsockname()
                udp.sendto(f"direct-udp {local[0]} {local[1]}\n".encode(), src)
                continue
            conn, _ = s.accept()
            local = conn.getsockname()
            with contextlib.suppress(OSError):
                conn.sendall(f"direct {local[0]} {local[1]}\n".encode())
            conn.close()


def _connect_all(dsts: list[tuple[str, int]]) -> None:
    results: list[dict[str, Any]] = [{} for _ in dsts]

    def one(i: int) -> None:
        results[i] = _exchange(dsts[i], timeout=20)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(dsts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        print(json.dumps(r))


def _loop(seconds: float, dst: tuple[str, int]) -> None:
    counts: dict[str, int] = {}
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = _exchange(dst, timeout=2)
        kind = r["reply"].split(" ", 1)[0] if "reply" in r else "error"
        counts[kind] = counts.get(kind, 0) + 1
        if "error" in r and len(errors) < 5:
            errors.append(r["error"])
    print(json.dumps({"counts": counts, "errors": errors}), flush=True)


def _lines() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        host, port = line.split()
        print(json.dumps(_exchange((host, int(port)))), flush=True)


class CaptureListener:
    """The proxy's part: a listener opened inside a pod netns by this (root-cgroup)
    process, answering each connection with what `describe` says about it."""

    def __init__(self, netns: str, addr: tuple[str, int],
                 describe: Callable[[socket.socket], str], v6only: bool = True) -> None:
        from mesh.runtime.netns import in_netns

        with in_netns(netns):
            self.sock = socket.socket(_family(addr[0]), socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if ":" in addr[0]:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        self.sock.bind(addr)
        self.sock.listen(1024)
        self.seen: list[tuple[Any, str]] = []
        self._describe = describe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                answer = self._describe(conn)
            except Exception as exc:
                answer = f"error {type(exc).__name__}: {exc}"
            self.seen.append((peer, answer))
            with contextlib.suppress(OSError):
                conn.sendall(f"{answer}\n".encode())
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def __enter__(self) -> CaptureListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def serving(rt: Any, pod: Any, addrs: list[tuple[str, int]]) -> Iterator[Any]:
    """A real destination server inside a pod, stopped on exit whatever happens."""
    import subprocess

    proc = rt.spawn(pod, [sys.executable, HELPER, "serve", *(fmt_hostport(*a) for a in addrs)],
                    stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "ready", f"server in {pod.name} did not start: {line!r}"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def run_json(rt: Any, pod: Any, args: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    done = rt.run(pod, [sys.executable, HELPER, *args], timeout=timeout)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def main(argv: list[str]) -> None:
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        _serve([parse_hostport(a) for a in rest])
    elif cmd == "connect":
        _connect_all([parse_hostport(a) for a in rest])
    elif cmd == "loop":
        _loop(float(rest[0]), parse_hostport(rest[1]))
    elif cmd == "lines":
        _lines()
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])


@contextlib.contextmanager
def node_redirector(rt: Any, node: Any) -> Iterator[Any]:
    """Capture loaded for a node; every attachment and pin removed afterwards."""
    from ebpf.redirector import Redirector, uninstall

    pin = f"{rt.cluster}-{node.name}"
    try:
        redirector = Redirector.load(pin, node.cgroup_path)
        yield redirector
    finally:
        uninstall(pin)


def enrolled(pod: Any, **kw: Any) -> Any:
    from ebpf.enrollment import EnrolledPod

    return EnrolledPod(name=f"{pod.namespace}/{pod.name}", netns=pod.netns,
                       cgroup_path=pod.cgroup_path, ips=(str(pod.ip), str(pod.ip6)), **kw)


@contextlib.contextmanager
def capture_node(rt: Any, pod_names: tuple[str, ...], enroll: tuple[str, ...] = ("client",)
                 ) -> Iterator[dict[str, Any]]:
    """The capture tests' world: node n1 with capture loaded, the pods `pod_names` in
    namespace demo, those in `enroll` enrolled; keys rt, node, redirector and each pod
    by name. Pins and attachments are removed afterwards (node_redirector)."""
    node = rt.create_node("n1")
    pods = {name: rt.create_pod("n1", "demo", name) for name in pod_names}
    with node_redirector(rt, node) as redirector:
        for name in enroll:
            redirector.enroll(enrolled(pods[name]))
        yield {"rt": rt, "node": node, "redirector": redirector, **pods}


def pin_old_map(pins: Any, name: str, key: str, value: str) -> None:
    """Pin a hash map `name` (`key` -> `value`, C types) where the pin layout `pins`
    keeps its maps, as another or an earlier version of the programs left it."""
    from bcc import BPF

    old = BPF(text=(
        f'BPF_TABLE_PINNED("hash", {key}, {value}, {name}, 16, "'
        f'{pins.map(name)}");\nint f(void *ctx) {{ return 0; }}'
    ).encode())
    old.cleanup()

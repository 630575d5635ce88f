"""Relay two TCP sockets of the proxy in the kernel (ebpf/splice.bpf.c): after
admission, the accepted client socket and the socket dialled to the app go into the
splice sockhash and every byte either receives is sent on by the kernel; the proxy
reads none of them. It keeps watching both sockets to finish the connection the way
the user-space relay does (nodeagent.proxy.relay): half-close each way, reset
propagated, then both sockets out of the maps, closed, bytes counted.

The races, and what closes each:
- Bytes queued before the splice (the client sent its request while the proxy was
  deciding, the app greeted first) would sit in the receive queue until the next
  segment arrives — forever for a request/response. The kernel runs the verdict only
  from data_ready; setting SO_RCVLOWAT calls tcp_data_ready under the socket lock,
  which hands the queue to the program in order (the "kick").
- FIN while redirected bytes still wait in the peer's psock queue: the kernel sends
  them later from a work item, and a shutdown(SHUT_WR) now would cut them off. The
  proxy half-closes the peer only once the peer socket has taken every redirected
  byte: (bytes_acked + unsent) of the peer, counted from the splice, equals the
  program's redirected count for this direction.
- The kernel queues redirected skbs with no limit (they leave the receiving socket's
  accounting): a reader that stops reading would pin unbounded memory. The proxy
  checks the backlog (redirected minus what the peer socket took) every 5 ms while
  bulk flows (50 ms when less than 4 MiB moved since the last check) and pauses the
  direction above SPLICE_HIGH_WATER: the program then passes skbs to the receiving
  socket, whose receive buffer fills and TCP closes the window. The proxy forwards
  what was passed itself, after the peer took everything redirected before it, and
  the program redirects again only once passed == taken: nothing overtakes.
Cilium removed its socket-level sockmap acceleration and Merbridge redirected
sendmsg() (sk_msg) between app sockets; docs/ebpf.md says what was learned from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import select
import socket
import struct
from dataclasses import dataclass, field

import structlog

from ebpf.errors import BpfSyscallError, EbpfError
from ebpf.splice import SpliceMaps, install
from mesh import hbone

log = structlog.get_logger("nodeagent.proxy.splice")

READ_SIZE = 256 * 1024
SIOCOUTQ = 0x5411
TCP_INFO_BYTES_ACKED = 120  # offset of tcpi_bytes_acked in struct tcp_info
SPLICE_HIGH_WATER = 64 * 1024 * 1024  # redirected bytes the peer socket has not taken
WATCH_FAST = 0.005  # backlog check while bytes flow...
WATCH_SLOW = 0.05  # ...backing off to this while idle or slow
WATCH_BULK = 4 * 1024 * 1024  # bytes moved since the last check that mean "bulk"
DRAIN_POLL = 0.001


def install_or_log(pin_name: str) -> None:
    """Install the splice program (in the agent's compile child); a failure is logged
    and the proxies relay same-node connections in user space (Splicer.open says so)."""
    try:
        install(pin_name)
    except EbpfError as e:
        log.warning("same-node splice not installed: user-space relay", pin=pin_name,
                    error=str(e))


class SpliceUnavailable(Exception):
    """The splice could not be set up; `reason` labels ambient_splice_fallback_total."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class SpliceReset(Exception):
    """One side of a spliced connection was reset (or failed): both are reset."""


def _outq(sock: socket.socket) -> int:
    value: int = struct.unpack("=i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0" * 4))[0]
    return value


def written(sock: socket.socket) -> int:
    """Bytes the socket has taken for sending (acked + still queued), up to a constant
    the caller removes by subtracting the value taken before the splice."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES_ACKED + 8)
    acked: int = struct.unpack_from("=Q", info, TCP_INFO_BYTES_ACKED)[0]
    return acked + _outq(sock)


PEER_FIN_STATES = frozenset({6, 7, 8, 9, 11})  # TIME_WAIT CLOSE CLOSE_WAIT LAST_ACK CLOSING


def _fin_received(sock: socket.socket) -> bool:
    """The peer has sent its FIN (tcpi_state)."""
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return True
    return state in PEER_FIN_STATES


def _socket_error(sock: socket.socket) -> int:
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except OSError as e:
        return e.errno or errno.EBADF


@dataclass
class _Side:
    """One direction: bytes received on `src`, sent on by `dst`."""

    src: socket.socket
    dst: socket.socket
    cookie: int
    peer: int
    base: int  # written(dst) before the splice
    taken: int = 0  # passed bytes forwarded by the proxy
    paused: bool = False
    user_bytes: int = 0
    done: bool = False


@dataclass
class SplicedTransfer:
    """Bytes per direction: the kernel's redirects plus what the proxy forwarded."""

    request_bytes: int = 0
    response_bytes: int = 0
    user_bytes: int = 0  # of those, bytes that crossed user space (passed, then sent)
    reset: bool = False


@dataclass
class Splicer:
    """One per proxy process; None maps: every splice falls back (reason given)."""

    maps: SpliceMaps | None
    unavailable: str = ""
    live: set[tuple[int, int]] = field(default_factory=set)
    _epoll: select.epoll | None = None
    _epoll_loop: asyncio.AbstractEventLoop | None = None
    _waiters: dict[int, asyncio.Future[None]] = field(default_factory=dict)

    @classmethod
    def open(cls, pin_name: str) -> Splicer:
        try:
            return cls(SpliceMaps.open(pin_name))
        except EbpfError as e:
            log.warning("same-node splice unavailable: relaying in user space",
                        pin=pin_name, error=str(e))
            return cls(None, f"not_installed: {e}")

    def close(self) -> None:
        if self._epoll is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None
        if self.maps is not None:
            self.maps.close()
            self.maps = None

    async def relay(self, a: socket.socket, b: socket.socket,
                    result: SplicedTransfer | None = None) -> SplicedTransfer:
        """Splice `a` (the client side) and `b` (the app side) until both directions
        ended. Raises SpliceUnavailable before anything was spliced (the caller then
        relays in user space); closes both sockets in every other case. `result` is
        filled in even when the relay is cancelled (a policy cut)."""
        maps = self.maps
        if maps is None:
            raise SpliceUnavailable("not_installed", self.unavailable)
        try:
            base_a, base_b = written(a), written(b)
            ca, cb = maps.add_pair(a, b)
        except BpfSyscallError as e:
            reason = "map_full" if e.errno in (errno.E2BIG, errno.ENOSPC, errno.ENOMEM) \
                else "kernel_refused"
            raise SpliceUnavailable(reason, str(e)) from e
        except OSError as e:
            raise SpliceUnavailable("kernel_refused", str(e)) from e
        self.live.add((ca, cb))
        log.debug("spliced", a=ca, b=cb)
        up = _Side(a, b, ca, cb, base_b)
        down = _Side(b, a, cb, ca, base_a)
        result = result if result is not None else SplicedTransfer()
        try:
            for s in (a, b):  # hand whatever was queued before the splice to the program
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._direction(maps, up))
                    tg.create_task(self._direction(maps, down))
            except* (SpliceReset, OSError) as eg:
                log.debug("splice reset", error=repr(eg.exceptions))
                result.reset = True
                for s in (a, b):
                    hbone.reset_socket(s)
        finally:
            up_count, down_count = maps.counters(ca), maps.counters(cb)
            with contextlib.suppress(BpfSyscallError):
                maps.remove_pair(ca, cb)
            self.live.discard((ca, cb))
            self._forget(a, b)
            result.request_bytes = up_count.redirected + up.user_bytes
            result.response_bytes = down_count.redirected + down.user_bytes
            result.user_bytes = up.user_bytes + down.user_bytes
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()
        return result

    async def _direction(self, maps: SpliceMaps, side: _Side) -> None:
        loop = asyncio.get_running_loop()
        interval = WATCH_FAST
        last = -1
        next_check = loop.time() + interval
        while True:
            if side.paused:
                await self._resume_when_drained(maps, side)
                continue
            if await self._closing(side.src, next_check) and \
                    await self._readable(maps, side):
                return
            if loop.time() < next_check:
                continue
            counts = maps.counters(side.cookie)
            if counts.passed > side.taken:  # resumed, or no peer in the map a moment
                await self._drained(maps, side)
                await self._catch_up(maps, side)
            backlog = counts.redirected + side.user_bytes - (written(side.dst) - side.base)
            if backlog > SPLICE_HIGH_WATER:
                side.paused = True
                maps.set_control(side.cookie, side.peer, side.taken, True)
            # fast while bulk moves (the backlog bound depends on it), else back off:
            # a request/response stream needs no 200 checks a second
            interval = WATCH_FAST if counts.redirected - last > WATCH_BULK else \
                min(WATCH_SLOW, interval * 2)
            last = counts.redirected
            next_check = loop.time() + interval

    async def _closing(self, sock: socket.socket, deadline: float) -> bool:
        """Until the peer's FIN or an error reaches `sock` (True), or `deadline`.

        Watched with EPOLLRDHUP only, in one epoll set per process that the loop
        watches: a spliced socket's data_ready still wakes EPOLLIN waiters on every
        segment (after the verdict moved it), which cost the agent a wakeup per
        message; FIN (state_change) and reset (error_report) wake this set."""
        loop = asyncio.get_running_loop()
        waiters = self._ensure_epoll(loop)
        fd = sock.fileno()
        ready: asyncio.Future[None] = loop.create_future()
        waiters[fd] = ready
        mask = select.EPOLLRDHUP | select.EPOLLERR | select.EPOLLHUP | select.EPOLLONESHOT
        assert self._epoll is not None
        try:
            self._epoll.modify(fd, mask)
        except FileNotFoundError:
            self._epoll.register(fd, mask)
        try:
            async with asyncio.timeout_at(deadline):
                await ready
            return True
        except TimeoutError:
            return False
        finally:
            if waiters.get(fd) is ready:
                del waiters[fd]

    def _ensure_epoll(self, loop: asyncio.AbstractEventLoop
                      ) -> dict[int, asyncio.Future[None]]:
        if self._epoll is None or self._epoll_loop is not loop:  # one per event loop
            if self._epoll is not None:
                self._epoll.close()
            self._epoll, self._epoll_loop = select.epoll(), loop
            self._waiters.clear()
            loop.add_reader(self._epoll.fileno(), self._dispatch)
        return self._waiters

    def _dispatch(self) -> None:
        assert self._epoll is not None
        for fd, _ in self._epoll.poll(0):
            ready = self._waiters.pop(fd, None)
            if ready is not None and not ready.done():
                ready.set_result(None)

    def _forget(self, *socks: socket.socket) -> None:
        if self._epoll is None:
            return
        for s in socks:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(s.fileno())

    async def _resume_when_drained(self, maps: SpliceMaps, side: _Side) -> None:
        """Paused: the program passes what arrives to the source socket, whose receive
        buffer fills (TCP closes the window: the sender waits). Once the peer socket
        took every redirected byte (its own send queue still full: no bubble in the
        pipe), forward what was passed (at most a receive buffer) and let the program
        redirect again."""
        await asyncio.sleep(DRAIN_POLL)
        redirected = maps.counters(side.cookie).redirected
        if written(side.dst) - side.base < redirected + side.user_bytes:
            if err := _socket_error(side.dst):
                raise SpliceReset(f"{side.peer}: {errno.errorcode.get(err, err)}")
            return
        side.paused = False
        maps.set_control(side.cookie, side.peer, side.taken, False)
        await self._catch_up(maps, side)

    async def _catch_up(self, maps: SpliceMaps, side: _Side) -> None:
        """Forward every byte the program passed to the proxy. The program redirects
        again from the first skb that finds passed == taken, i.e. once the proxy has
        sent all that came before it: nothing overtakes. Passed bytes can sit a while
        in the psock's queue behind bytes redirected to this socket (unreadable yet)."""
        loop = asyncio.get_running_loop()
        while maps.counters(side.cookie).passed > side.taken:
            try:
                data = side.src.recv(READ_SIZE, socket.MSG_DONTWAIT)
            except (BlockingIOError, OSError):
                data = b""  # EOF, reset and EPIPE are the closing path's to judge
            if not data:
                if _fin_received(side.src) or _socket_error(side.src):
                    return
                await asyncio.sleep(DRAIN_POLL)
                continue
            await loop.sock_sendall(side.dst, data)
            side.user_bytes += len(data)
            side.taken += len(data)
            maps.set_control(side.cookie, side.peer, side.taken, side.paused)

    async def _drained(self, maps: SpliceMaps, side: _Side) -> None:
        """Until the peer socket took every byte redirected to it so far."""
        while True:
            redirected = maps.counters(side.cookie).redirected
            if written(side.dst) - side.base >= redirected + side.user_bytes:
                return
            if err := _socket_error(side.dst):
                raise SpliceReset(f"{side.peer}: {errno.errorcode.get(err, err)} with "
                                  f"{redirected - written(side.dst) + side.base} bytes "
                                  "still queued for it")
            await asyncio.sleep(DRAIN_POLL)

    async def _readable(self, maps: SpliceMaps, side: _Side) -> bool:
        """The source woke up: bytes passed to us, EOF, or an error. True: done."""
        try:
            data = side.src.recv(READ_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError as e:
            # A psock socket whose own write side we shut answers EPIPE where a plain
            # one says "nothing" or "EOF": only a socket error is a reset.
            if e.errno != errno.EPIPE or _socket_error(side.src):
                raise SpliceReset(f"{side.cookie}: {e}") from e
            if not _fin_received(side.src):
                await asyncio.sleep(DRAIN_POLL)
                return False
            data = b""
        if not data and (err := _socket_error(side.src)):  # a psock says EOF for a reset
            raise SpliceReset(f"{side.cookie}: {errno.errorcode.get(err, err)}")
        if not data and maps.counters(side.cookie).passed > side.taken:
            # EOF is reported while passed bytes still wait in the psock's own queue
            # (behind skbs redirected to this socket, sent first): not the end yet.
            await asyncio.sleep(DRAIN_POLL)
            return False
        await self._drained(maps, side)
        if data:  # passed (paused, or the peer gone): forward after what went before
            await asyncio.get_running_loop().sock_sendall(side.dst, data)
            side.user_bytes += len(data)
            side.taken += len(data)
            maps.set_control(side.cookie, side.peer, side.taken, side.paused)
            return False
        with contextlib.suppress(OSError):
            side.dst.shutdown(socket.SHUT_WR)
        side.done = True
        return True

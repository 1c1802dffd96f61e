"""Many non-blocking client connections logging in, driven by one epoll loop.

A connection runs a list of steps (send a line, wait for a reply); once the
steps are done it is "ready" and its input is drained and discarded, so the
server never has to queue notices for it. Workloads take ready connections
over by polling `Pool.ep` themselves.
"""

import errno
import os
import select
import socket
import struct
import time
from typing import NamedTuple

PROMPT = b"enter a username:\n"
LOGGED_IN = b"you joined the group General\n"
RECV_SIZE = 256 * 1024
# Room in the scratch buffer for an unfinished line carried over between reads.
MAX_TAIL = 64 * 1024
LOGIN_TIMEOUT_S = 30.0


class Step(NamedTuple):
    """Send `line` (if any), then wait until one of `ok` appears in the input."""

    line: bytes | None
    ok: tuple[bytes, ...]


def login_steps(name: str) -> list[Step]:
    return [Step(None, (PROMPT,)), Step(name.encode() + b"\n", (LOGGED_IN,))]


def create_step(group: str) -> Step:
    # An existing group is fine: it happens when benching a running server twice.
    exists = b"error: group already exists: " + group.encode()
    return Step(b"create %s\n" % group.encode(), (b"ok: created group ", exists))


def join_step(group: str) -> Step:
    return Step(b"join %s\n" % group.encode(), (b"ok: joined group ",))


# ---------------------------------------------------------------- WebSocket, minimal
# The web port's client side in a few lines, for the WebSocket workloads: the
# upgrade request, masked client frames (RFC 6455 requires a mask; one random key
# per batch of frames), and server frames (unmasked) back to LF-ended lines.

WS_UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: %b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: YmVuY2hiZW5jaGJlbmNoYg==\r\nSec-WebSocket-Version: 13\r\n\r\n")
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 1, 8, 9, 10


def ws_mask(payload: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte key, in C (one big-int operation), not byte by byte."""
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def ws_frame(payload: bytes, key: bytes | None = None, opcode: int = OP_TEXT) -> bytes:
    """One masked client frame."""
    key = key or os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
    return head + key + ws_mask(payload, key)


def ws_deframe(data: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """Server frames in `data`: the text ones as LF-ended lines, the incomplete
    rest, and the payloads of pings (to answer). A close reads as no line."""
    out, pings = [], []
    i, n = 0, len(data)
    while i + 2 <= n:
        length, h = data[i + 1] & 0x7F, 2
        if length == 126:
            if i + 4 > n:
                break
            length, h = int.from_bytes(data[i + 2 : i + 4], "big"), 4
        elif length == 127:
            if i + 10 > n:
                break
            length, h = int.from_bytes(data[i + 2 : i + 10], "big"), 10
        if i + h + length > n:
            break
        op = data[i] & 0x0F
        if op in (OP_TEXT, 0):  # continuation frames are not sent by chatsrv
            out.append(data[i + h : i + h + length] + b"\n")
        elif op == OP_PING:
            pings.append(data[i + h : i + h + length])
        i += h + length
    return b"".join(out), data[i:], pings


class Conn:
    __slots__ = ("sock", "fd", "steps", "buf", "connecting", "started", "done_at", "error",
                 "raw", "handshake")

    def __init__(self, sock: socket.socket, steps: list[Step]):
        self.sock = sock
        self.fd = sock.fileno()
        self.steps = steps
        self.buf = b""  # unmatched input while logging in, then the unfinished last line
        self.connecting = True
        self.started = time.monotonic()
        self.done_at: float | None = None
        self.error: str | None = None
        self.raw = b""  # WebSocket: bytes of an incomplete frame (frame-aligned tail)
        self.handshake = False  # WebSocket: the 101 is awaited


class Pool:
    """Opens connections, runs their steps with bounded concurrency, drains ready ones."""

    def __init__(self, addr: tuple[str, int], rcvbuf: int = 0, ws: bool = False):
        self.addr = addr
        self.rcvbuf = rcvbuf
        self.ws = ws  # speak WebSocket (the web port's /ws) instead of lines
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.in_progress: set[Conn] = set()
        self.dropped: list[Conn] = []  # ready connections the server closed
        self.scratch = bytearray(RECV_SIZE + MAX_TAIL)
        self.view = memoryview(self.scratch)

    def login_many(self, step_lists, conc: int) -> list[Conn]:
        """Run each step list on a new connection, at most `conc` at once."""
        todo = iter(step_lists)
        out: list[Conn] = []
        more = True
        next_expiry = time.monotonic() + 0.5
        while more or self.in_progress:
            while more and len(self.in_progress) < conc:
                steps = next(todo, None)
                more = steps is not None
                if more:
                    out.append(self._open(steps))
            self.poll(0.05)
            if time.monotonic() >= next_expiry:
                self._expire()
                next_expiry = time.monotonic() + 0.5
        return out

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.poll(min(left, 0.1))

    def poll(self, timeout: float) -> None:
        for fd, _ in self.ep.poll(timeout, 1024):
            c = self.conns.get(fd)
            if c is None:
                continue
            if c.connecting:
                self._connected(c)
            else:
                self._readable(c)

    def close(self) -> None:
        for c in self.conns.values():
            c.sock.close()
        self.conns.clear()
        self.ep.close()

    def forget(self, c: Conn) -> None:
        """Stop watching a connection that a workload found closed."""
        self.ep.unregister(c.fd)
        del self.conns[c.fd]
        c.sock.close()

    def _open(self, steps: list[Step]) -> Conn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        # Go's net package sets TCP_NODELAY by default; match it for comparable latency.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.rcvbuf:
            # Before connect, so the window scale is negotiated for it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        c = Conn(sock, steps)
        err = sock.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            c.error = f"connect: {errno.errorcode.get(err, err)}"
            sock.close()
            return c
        self.conns[c.fd] = c
        self.in_progress.add(c)
        self.ep.register(c.fd, select.EPOLLOUT)
        return c

    def _connected(self, c: Conn) -> None:
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(c, f"connect: {errno.errorcode.get(err, err)}")
            return
        c.connecting = False
        self.ep.modify(c.fd, select.EPOLLIN)
        if self.ws:
            c.handshake = True
            c.sock.send(WS_UPGRADE % f"{self.addr[0]}:{self.addr[1]}".encode())
            return
        self._send_step(c)

    def _readable(self, c: Conn) -> None:
        try:
            n = c.sock.recv_into(self.view, RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(c, f"recv: {e}")
            return
        if n == 0:
            self._fail(c, "EOF")
        elif self.ws:
            self._ws_readable(c, bytes(self.scratch[:n]))
        elif c.steps:
            c.buf += self.scratch[:n]
            self._match(c)
        else:
            nl = self.scratch.rfind(b"\n", 0, n)
            c.buf = c.buf + self.scratch[:n] if nl < 0 else bytes(self.scratch[nl + 1 : n])

    def _ws_readable(self, c: Conn, data: bytes) -> None:
        data = c.raw + data
        if c.handshake:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                c.raw = data
                return
            if not data.startswith(b"HTTP/1.1 101 "):
                self._fail(c, "upgrade refused: " + data.split(b"\r\n", 1)[0].decode())
                return
            c.handshake, data = False, data[end + 4 :]
        lines, c.raw, pings = ws_deframe(data)
        for ping in pings:
            ws_pong(c.sock, ping)
        if c.steps:
            c.buf += lines
            self._match(c)

    def _match(self, c: Conn) -> None:
        while c.steps:
            hits = [i + len(ok) for ok in c.steps[0].ok if (i := c.buf.find(ok)) >= 0]
            if not hits:
                err = c.buf.find(b"error: ")
                if err >= 0:
                    self._fail(c, c.buf[err:].split(b"\n", 1)[0].decode(errors="replace"))
                return
            c.buf = c.buf[min(hits) :]
            del c.steps[0]
            self._send_step(c)
            if c.error:
                return
        c.done_at = time.monotonic()
        self.in_progress.discard(c)
        c.buf = c.buf[c.buf.rfind(b"\n") + 1 :]

    def _send_step(self, c: Conn) -> None:
        line = c.steps[0].line if c.steps else None
        if line is None:
            return
        if self.ws:
            line = ws_frame(line.rstrip(b"\n"))
        try:
            sent = c.sock.send(line)
        except OSError as e:
            self._fail(c, f"send: {e}")
            return
        if sent != len(line):  # a fresh socket always takes one short line
            self._fail(c, "short write while logging in")

    def _expire(self) -> None:
        limit = time.monotonic() - LOGIN_TIMEOUT_S
        for c in [c for c in self.in_progress if c.started < limit]:
            wanted = c.steps[0].ok[0].decode().strip() if c.steps else "connect"
            self._fail(c, f"timeout waiting for {wanted!r}")

    def _fail(self, c: Conn, why: str) -> None:
        c.error = why
        if c in self.in_progress:
            self.in_progress.discard(c)
        else:
            self.dropped.append(c)
        self.forget(c)


def ws_pong(sock: socket.socket, payload: bytes) -> None:
    try:
        sock.send(ws_frame(payload, opcode=OP_PONG))
    except OSError:
        pass

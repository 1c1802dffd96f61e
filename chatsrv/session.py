"""One client connection on gevent: read bytes, frame lines, call the hub, move bytes out.

Reading: one greenlet per client (the StreamServer handler) reads 64 KiB at a
time, splits once per read, applies the line limit and the rate limit, and
passes decoded lines to the hub.

Writing never blocks anyone else. The hub appends lines to the user's queue;
once per loop turn the server's flush callback joins each dirty queue into one
buffer and calls `Session.write`, which tries one non-blocking `send`. Only
when the kernel buffer is full does a writer greenlet appear for that session
(`_drain`), holding the rest in `chunks`; past `--sendq` bytes the session is
ended with reason `sendq`. So a burst costs one syscall per receiver per turn
and no greenlet switch, and a reader that never reads only hurts itself.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import gevent
from gevent import Timeout

from . import protocol as P
from .hub import LoginRefused, User
from .ratelimit import RateLimiter

if TYPE_CHECKING:
    from .server import ChatServer

log = logging.getLogger("chatsrv.session")

READ_SIZE = 65536


class SessionEnd(Exception):
    """Ends the reading loop; `reason` is the disconnect reason of PROTOCOL.md."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LoginTimeout(Exception):
    pass


class Session:
    __slots__ = (
        "server", "sock", "peer", "id", "user", "reader", "writer", "chunks", "qbytes",
        "raw_send", "bytes_in", "bytes_out", "ending", "connected_at", "limiter", "tls",
    )

    def __init__(self, server: ChatServer, sock, peer: str, sid: int, tls=None) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.id = sid
        self.user: User | None = None
        self.reader = gevent.getcurrent()
        self.writer = None
        self.chunks: list[bytes] = []
        self.qbytes = 0
        # The non-blocking stdlib socket under gevent's wrapper, so a flush is
        # one syscall and never a switch. TLS encrypts first (see tls.py).
        self.raw_send = sock._sock.send
        self.tls = tls
        self.limiter: RateLimiter | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.ending: str | None = None
        self.connected_at = time.time()

    # ------------------------------------------------------------ output

    def emit(self, data: bytes) -> None:
        """Queue a line for this session, in order with everything the hub queued."""
        if self.user is not None:
            self.server.hub.send_line(self.user, data)
            self.server.schedule_flush()
        else:
            self.write(data)

    def write(self, data: bytes) -> None:
        """Send now if the socket takes it; otherwise queue for the writer greenlet."""
        if self.ending is not None and self.ending not in self.server.graceful:
            return
        if self.tls is not None:
            data = self.tls.encrypt(data)
        if self.writer is None:
            try:
                sent = self.raw_send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.abort("error")
                return
            self.bytes_out += sent
            if sent == len(data):
                return
            data = data[sent:]
        self.chunks.append(data)
        self.qbytes += len(data)
        if self.qbytes > self.server.config.sendq:
            self.abort("sendq")
        elif self.writer is None:
            self.writer = gevent.spawn(self._drain)

    def _drain(self) -> None:
        try:
            while self.chunks:
                data = b"".join(self.chunks)
                self.chunks.clear()
                self.sock.sendall(data)
                self.bytes_out += len(data)
                self.qbytes -= len(data)
        except OSError:
            self.abort("error")
        finally:
            self.writer = None

    # ------------------------------------------------------------ ending

    def abort(self, reason: str) -> None:
        """End this session from anywhere (flush callback, writer, admin, shutdown)."""
        if self.ending is not None:
            return
        self.ending = reason
        if reason == "sendq":
            self.chunks.clear()
        if gevent.getcurrent() is self.reader:
            raise SessionEnd(reason)
        self.reader.kill(SessionEnd(reason), block=False)

    def run(self) -> None:
        """The reader greenlet's body; returns only when the session is over."""
        reason = "error"
        try:
            self._read_loop()
        except SessionEnd as end:
            reason = end.reason
        except LoginTimeout:
            reason = "timeout"
            self.write(P.LOGIN_TIMEOUT)
        except (ConnectionError, TimeoutError, OSError):
            reason = "error" if self.ending is None else self.ending
        except Exception:
            log.exception("session %d: server error", self.id)
        finally:
            self._finish(self.ending or reason)

    def _finish(self, reason: str) -> None:
        self.ending = reason
        server = self.server
        if self.user is not None:
            server.hub.logout(self.user, notify=not server.stopping)
            server.schedule_flush()
            self._take_queue()
        if reason in server.graceful:
            self._flush_final(server.config.shutdown_grace)
        if self.writer is not None:
            self.writer.kill(block=False)
        try:
            self.sock.close()
        except OSError:
            pass
        server.session_closed(self, reason)

    def _take_queue(self) -> None:
        """Write what the hub queued for us: after logout no flush will (the hub forgot us)."""
        queue = self.user.queue
        if queue:
            data = b"".join(queue)
            queue.clear()
            self.write(data)

    def _flush_final(self, grace: float) -> None:
        """Best effort, bounded: the last replies (`ok: bye`, a notice) reach the client."""
        with Timeout(grace, False):
            if self.writer is not None:
                self.writer.join()
            if self.chunks:
                self._drain()

    # ------------------------------------------------------------ input

    def _read_loop(self) -> None:
        server = self.server
        max_line = server.config.max_line
        recv = self.tls.recv if self.tls is not None else self.sock.recv
        self.write(P.PROMPT)
        timer = Timeout.start_new(server.config.login_timeout, LoginTimeout)
        try:
            buf = b""
            discarding = False  # inside a too-long line whose error was already sent
            while True:
                data = recv(READ_SIZE)
                if not data:
                    raise SessionEnd("eof")
                self.bytes_in += len(data)
                lines = (buf + data if buf else data).split(b"\n")
                buf = lines.pop()
                if discarding and lines:
                    del lines[0]
                    discarding = False
                if len(buf) >= max_line:
                    if not discarding:
                        lines.append(buf)  # reported as too long, like a complete one
                        discarding = True
                    buf = b""
                if self.user is None:
                    lines = self._login_lines(lines, max_line, timer)
                if lines:
                    self._command_lines(lines, max_line)
                server.schedule_flush()
                gevent.sleep(0)  # let the flush and other readers run between reads
        finally:
            timer.close()

    def _decode(self, line: bytes, max_line: int) -> str | None:
        """A framed line as text, or None after replying with its framing error."""
        if len(line) >= max_line:
            self.emit(P.line_too_long(max_line))
            return None
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            return line.decode()
        except UnicodeDecodeError:
            self.emit(P.INVALID_UTF8)
            return None

    def _login_lines(self, lines: list[bytes], max_line: int, timer: Timeout) -> list[bytes]:
        """Consume lines at the prompt; return the ones pipelined after a login."""
        for i, line in enumerate(lines):
            text = self._decode(line, max_line)
            if text is not None:
                try:
                    self.user = self.server.hub.login(text, self)
                except LoginRefused as refused:
                    self.write(P.encode(str(refused)))
                else:
                    timer.close()
                    self.server.session_logged_in(self)
                    return lines[i + 1:]
            self.write(P.PROMPT)
        return []

    def _command_lines(self, lines: list[bytes], max_line: int) -> None:
        server = self.server
        hub = server.hub
        user = self.user
        limiter = self.limiter
        for line in lines:
            if limiter is not None:
                delay = limiter.take()
                if delay > 0:
                    server.schedule_flush()
                    gevent.sleep(delay)
            text = self._decode(line, max_line)
            if text is None:
                continue
            if hub.handle(user, text):
                raise SessionEnd("exit")
            if hub.uncommitted or hub.blocked:  # replies that wait for a group's commit
                server.writer.settle()

"""One client connection on gevent: read bytes, frame lines, call the hub, move bytes out.

Reading has two phases. Until login, the StreamServer's greenlet for the
client reads (64 KiB at a time, one split per read) with the login timeout
around it: blocking code is the clearest way to write a prompt loop. Once
logged in, the session *parks*: the greenlet returns and an io watcher calls
`_on_readable` from the event loop whenever bytes arrive. An idle client then
costs no greenlet (a blocked gevent greenlet keeps its C stack slice and a
Python data-stack page, about 8 KB; `make bench idle` measured 10.9 kB RSS per
idle client with a blocked reader greenlet, 1.8 kB parked), and a read costs
no greenlet switch. The rate limit pauses the watcher instead of sleeping.

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
import ssl
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
# While a session waits for the store it keeps reading, to notice its peer
# closing, but holds at most this many bytes unprocessed before it stops.
HOLD_MAX = 4 * READ_SIZE
# One receive buffer for every session: the loop runs one callback or greenlet
# at a time and each read is copied out before anything else runs. A fresh
# 64 KiB bytes per recv would be malloc'd and shrunk on every read.
_RECV_BUF = bytearray(READ_SIZE)
_RECV_VIEW = memoryview(_RECV_BUF)


class SessionEnd(Exception):
    """Ends the login phase; `reason` is the disconnect reason of PROTOCOL.md."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LoginTimeout(Exception):
    pass


class Session:
    __slots__ = (
        "server", "sock", "peer", "id", "user", "reader", "writer", "chunks", "qbytes",
        "raw_send", "raw_recv_into", "bytes_in", "bytes_out", "ending", "connected_at",
        "limiter", "tls", "rest", "discarding", "paused", "closed", "addr_key", "held",
        "held_bytes",
    )

    def __init__(self, server: ChatServer, sock, peer: str, sid: int, tls=None) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.id = sid
        self.user: User | None = None
        self.reader = gevent.getcurrent()  # None once parked
        self.writer = None
        self.chunks: list[bytes] = []
        self.qbytes = 0
        # The non-blocking stdlib socket under gevent's wrapper, so a flush or a
        # parked read is one syscall and never a switch. TLS goes through tls.py.
        self.raw_send = sock._sock.send
        self.raw_recv_into = sock._sock.recv_into
        self.tls = tls
        self.limiter: RateLimiter | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.ending: str | None = None
        self.closed = False
        self.connected_at = time.time()
        self.addr_key: str | None = None  # the address limits.py counts it under
        self.rest = b""  # an incomplete line carried to the next read
        self.discarding = False  # inside a too-long line whose error was already sent
        # While reading is paused: the rate limit's timer, or the greenlet
        # waiting for a store commit (see _wait_for_store).
        self.paused = None
        self.held: list[bytes] = []  # bytes read while waiting for the store
        self.held_bytes = 0

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
        reader = self.reader
        if reader is None:
            self._finish(reason)
        elif gevent.getcurrent() is reader:
            raise SessionEnd(reason)
        else:
            reader.kill(SessionEnd(reason), block=False)

    def run(self) -> None:
        """The StreamServer greenlet's body: the login phase, then park (and return)."""
        reason = None
        try:
            lines = self._login_phase()
        except SessionEnd as end:
            reason = end.reason
        except LoginTimeout:
            reason = "timeout"
            self.write(P.LOGIN_TIMEOUT)
        except (ConnectionError, TimeoutError, OSError):
            reason = "error"
        except Exception:
            log.exception("session %d: server error", self.id)
            reason = "error"
        if reason is not None or self.ending is not None:
            self._finish(self.ending or reason)
            return
        self.reader = None
        self.sock._read_event.start(self._on_readable)
        self._handle_lines(lines, False)
        if self.tls is not None and self.ending is None:
            self._on_plaintext(self.tls.read_buffered())
        self.server.schedule_flush()

    def _finish(self, reason: str) -> None:
        """Leave the hub at once; close now, or after a bounded final flush."""
        self.ending = reason
        if self.closed:
            return
        self.closed = True
        self._stop_reading()
        server = self.server
        if self.user is not None:
            server.hub.logout(self.user, notify=not server.stopping)
            server.schedule_flush()
            self._take_queue()
        if reason in server.graceful and (self.chunks or self.writer is not None):
            gevent.spawn(self._close_after_flush, reason)
        else:
            self._close(reason)

    def _stop_reading(self) -> None:
        # Stopping the watcher also clears its callback, so the gevent socket's
        # close finds no waiter to wake.
        self.sock._read_event.stop()
        paused = self.paused
        if isinstance(paused, gevent.Greenlet):
            return  # a store commit in progress: it finishes, then sees `ending`
        if paused is not None:
            paused.close()
            self.paused = None

    def _close_after_flush(self, reason: str) -> None:
        """Best effort, bounded: the last replies (`ok: bye`, a notice) reach the client."""
        with Timeout(self.server.config.shutdown_grace, False):
            if self.writer is not None:
                self.writer.join()
            if self.chunks:
                self._drain()
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self.writer is not None and self.writer is not gevent.getcurrent():
            self.writer.kill(block=False)
        try:
            self.sock.close()
        except OSError:
            pass
        self.server.session_closed(self, reason)
        if self.user is not None:
            # Session and User point at each other: break the cycle so a closed
            # session is freed at once, not at the next full GC (the thresholds
            # are high, see server.tune_gc; the soak showed RSS creeping).
            self.user.conn = None

    def _take_queue(self) -> None:
        """Write what the hub queued for us: after logout no flush will (the hub forgot us)."""
        queue = self.user.queue
        if queue:
            data = b"".join(queue)
            queue.clear()
            self.write(data)

    # ------------------------------------------------------------ login phase

    def _login_phase(self) -> list[bytes]:
        """Prompt and read until a login; return the lines pipelined after it."""
        server = self.server
        max_line = server.config.max_line
        recv = self.tls.recv if self.tls is not None else self._recv_shared
        self.write(P.PROMPT)
        with Timeout(server.config.login_timeout, LoginTimeout):
            while True:
                data = recv(READ_SIZE)
                if not data:
                    raise SessionEnd("eof")
                self.bytes_in += len(data)
                lines = self._frame(data, max_line)
                for i, line in enumerate(lines):
                    if self._try_login(line, max_line):
                        return lines[i + 1:]
                    self.write(P.PROMPT)

    def _recv_shared(self, size: int) -> bytes:
        n = self.sock.recv_into(_RECV_BUF, size)
        return _RECV_VIEW[:n].tobytes()

    def _try_login(self, line: bytes, max_line: int) -> bool:
        text = self._decode(line, max_line)
        if text is None:
            return False
        try:
            self.user = self.server.login(text, self)
        except LoginRefused as refused:
            self.write(P.encode(str(refused)))
            return False
        self.server.session_logged_in(self)
        return True

    # ------------------------------------------------------------ parked reading

    def _on_readable(self) -> None:
        """The io watcher's callback, in the event loop: read what is there, handle it."""
        try:
            n = self.raw_recv_into(_RECV_BUF)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort("error")
            return
        if n == 0:
            self.abort("eof")
            return
        self.bytes_in += n
        data = _RECV_VIEW[:n].tobytes()
        if self.tls is not None:
            try:
                data, eof = self.tls.decrypt(data)
            except ssl.SSLError:
                self.abort("error")
                return
            if eof:
                self._on_plaintext(data)
                self.abort("eof")
                return
        self._on_plaintext(data)
        self.server.schedule_flush()

    def _on_plaintext(self, data: bytes) -> None:
        if data and self.ending is None:
            self._handle_lines(self._frame(data, self.server.config.max_line), False)

    def _handle_lines(self, lines: list[bytes], paid: bool) -> None:
        """Run commands in order; pause reading when the rate limit says wait.

        `paid`: the first line's token was taken before a pause."""
        try:
            self._run_commands(lines, paid)
        except Exception:
            log.exception("session %d: server error", self.id)
            self.abort("error")

    def _run_commands(self, lines: list[bytes], paid: bool) -> None:
        hub = self.server.hub
        user = self.user
        limiter = self.limiter
        max_line = self.server.config.max_line
        for i, line in enumerate(lines):
            if limiter is not None and not (paid and i == 0):
                delay = limiter.take()
                if delay > 0:
                    self._pause(delay, lines[i:])
                    return
            text = self._decode(line, max_line)
            if text is None:
                continue
            if hub.handle(user, text):
                self.abort("exit")
                return
            if hub.uncommitted or hub.blocked or hub.queries:  # a reply waits for the store
                self._wait_for_store(lines[i + 1:])
                return

    def _pause(self, delay: float, lines: list[bytes]) -> None:
        """Stop reading for `delay` seconds, then go on with `lines` (kept in order)."""
        self.sock._read_event.stop()
        self.server.schedule_flush()
        timer = self.paused = self.server.loop.timer(delay)
        timer.start(self._resume, lines)

    def _resume(self, lines: list[bytes]) -> None:
        self.paused.close()
        self.paused = None
        self._go_on(lines, True)

    def _go_on(self, lines: list[bytes], paid: bool) -> None:
        if self.ending is not None:
            return
        self._handle_lines(lines, paid)
        if self.ending is None and self.paused is None:
            self.sock._read_event.start(self._on_readable)
        self.server.schedule_flush()

    def _wait_for_store(self, lines: list[bytes]) -> None:
        """`create` (or a command naming a group being created, or `history` read
        from the store) answers once the store has: wait in a greenlet of our own,
        so this client's replies keep their order and nobody else waits.

        Meanwhile the socket is still read (`_hold`), so a peer that closes is
        noticed at once and its name is free, however long the store takes; what
        it sent is held, in order, for when the reply is in."""
        self.sock._read_event.stop()
        self.server.schedule_flush()
        pending = self.server.writer.take_pending()
        self.paused = gevent.spawn(self._settle, pending, lines)
        self.sock._read_event.start(self._hold)

    def _hold(self) -> None:
        """The io watcher's callback while waiting for the store: EOF ends the session."""
        try:
            n = self.raw_recv_into(_RECV_BUF)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort("error")
            return
        if n == 0:
            self.abort("eof")
            return
        self.bytes_in += n
        self.held.append(_RECV_VIEW[:n].tobytes())
        self.held_bytes += n
        if self.held_bytes >= HOLD_MAX:  # enough: the kernel's buffer holds the rest
            self.sock._read_event.stop()

    def _settle(self, pending, lines: list[bytes]) -> None:
        try:
            self.server.writer.settle(pending)
        finally:
            self.paused = None
        if self.ending is not None:
            return
        self.sock._read_event.stop()
        eof = False
        if self.held:
            data = b"".join(self.held)
            self.held.clear()
            self.held_bytes = 0
            if self.tls is not None:
                try:
                    data, eof = self.tls.decrypt(data)
                except ssl.SSLError:
                    self.abort("error")
                    return
            if data:
                lines = lines + self._frame(data, self.server.config.max_line)
        self._go_on(lines, False)
        if eof and self.ending is None:
            self.abort("eof")

    # ------------------------------------------------------------ framing

    def _frame(self, data: bytes, max_line: int) -> list[bytes]:
        """Complete lines of `data` after what was left of the last read."""
        rest = self.rest
        lines = (rest + data if rest else data).split(b"\n")
        rest = lines.pop()
        if self.discarding and lines:
            del lines[0]
            self.discarding = False
        if len(rest) >= max_line:
            if not self.discarding:
                lines.append(rest)  # reported as too long, like a complete one
                self.discarding = True
            rest = b""
        self.rest = rest
        return lines

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

"""One client connection on gevent: read bytes, frame lines, call the hub, move bytes out.

Reading has two phases. Until login, the acceptor's greenlet for the
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
from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING, Any

import gevent
from gevent import Timeout

from ..core import accounts as A
from ..core import framing
from ..core import protocol as P
from ..core.commits import Pending
from ..core.errors import LoginRefused
from ..core.framing import LEGACY_SILENCE_S, FramingError
from ..core.model import User
from ..core.ratelimit import RateLimiter
from ..passwords import needs_rehash

if TYPE_CHECKING:
    from ..server import ChatServer
    from .sockio import SockIO

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
# The login phase yields to the event loop after this many lines (and after
# every read), so one connection flooding the prompt never delays anyone else,
# whether the rate limit is on or off. It yields with a short timer, not
# sleep(0): sleep(0) only queues a callback, and gevent runs up to its switch
# interval of callbacks before it polls sockets again, so two flooders held a
# bystander's ping ~50 ms; with a timer the loop polls every time (bench.hostile,
# --rate-limit 0: median 48 ms -> 2.7 ms, worst 88 ms -> 6 ms).
LOGIN_YIELD_EVERY = 64
LOGIN_YIELD_S = 0.001


def _reason(err: OSError) -> str:
    """The disconnect reason of a socket error: a peer the kernel gave up on
    (keepalive probes or TCP_USER_TIMEOUT unanswered: ETIMEDOUT) is `timeout`."""
    return "timeout" if isinstance(err, TimeoutError) else "error"


class SessionEnd(Exception):
    """Ends the login phase; `reason` is the disconnect reason of PROTOCOL.md."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LoginTimeout(Exception):
    pass


class _Login:
    """A connection's login exchange: its failed attempts and, after the password
    prompt, the name whose password the next line is."""

    __slots__ = ("attempts", "waiting")

    def __init__(self) -> None:
        self.attempts = A.LoginAttempts()
        self.waiting: str | None = None


class Session:
    __slots__ = (
        "server", "sock", "peer", "id", "user", "reader", "writer", "chunks", "qbytes",
        "raw_send", "raw_recv_into", "bytes_in", "bytes_out", "ending", "connected_at",
        "limiter", "tls", "rest", "discarding", "paused", "closed", "addr_key", "legacy",
        "silence", "held", "held_bytes", "login", "framer", "host", "transport",
    )

    def __init__(self, server: ChatServer, sock: SockIO, peer: str, sid: int,
                 tls=None) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        # Behind a trusted proxy, the client's address X-Forwarded-For names: what
        # --create-rate counts instead of the peer's.
        self.host: str | None = None  # None: the peer's own (made when needed)
        self.transport = "tcp"  # tcp | tls | ws | wss: the metrics' {transport} label
        self.id = sid
        self.user: User | None = None
        self.reader = gevent.getcurrent()  # None once parked
        self.writer = None
        self.chunks: list[bytes] = []
        self.qbytes = 0
        # The non-blocking stdlib socket, so a flush or a parked read is one
        # syscall and never a switch. TLS goes through tls.py.
        self.raw_send = sock.sock.send
        self.raw_recv_into = sock.sock.recv_into
        self.tls = tls
        # A WebSocket session's WsChannel.frame_queue: the flush frames its queue
        # with it (one cached frame per delivery, see websocket.py); None for TCP.
        self.framer: Callable[[list[bytes]], bytes] | None = None
        # Every line counts, from the username prompt on (PROTOCOL.md v2, Limits).
        rate = server.config.rate_limit
        self.limiter = RateLimiter(rate, time.monotonic) if rate else None
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
        self.paused: Any | None = None  # gevent is untyped
        # A legacy client (the seed project's, which sends lines without LF):
        # set once a prompt line was ended by silence; from then on, bytes
        # followed by LEGACY_SILENCE_S of silence are a line (`silence` times it).
        self.legacy = False
        self.silence = None
        # Bytes read while waiting for the store (a list only while there are any:
        # an idle session should not pay for an empty one).
        self.held: list[bytes] | None = None
        self.held_bytes = 0
        # The login exchange with accounts (failures so far, the name waiting for
        # its password); dropped at login, so a logged-in session does not pay for it.
        self.login: _Login | None = None

    # ------------------------------------------------------------ output

    def emit(self, data: bytes) -> None:
        """Queue a line for this session, in order with everything the hub queued."""
        if self.user is not None:
            self.server.hub.send_line(self.user, data)
            self.server.schedule_flush()
        else:
            self.write(data)

    def write(self, data: bytes, framed: bool = False) -> None:
        """Send now if the socket takes it; otherwise queue for the writer greenlet.
        `framed`: WebSocket frames already (the flush's), not lines."""
        if self.ending is not None and self.ending not in self.server.graceful:
            return
        if self.tls is not None and not framed:
            data = self.tls.encrypt(data)
        if self.writer is None:
            try:
                sent = self.raw_send(data)
            except BlockingIOError:
                sent = 0
            except OSError as err:
                self.abort(_reason(err))
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
        except OSError as err:
            self.abort(_reason(err))
        finally:
            self.writer = None

    # ------------------------------------------------------------ ending

    def abort(self, reason: str) -> None:
        """End this session from anywhere (flush callback, writer, admin, shutdown)."""
        if self.ending is not None:
            return
        self.ending = reason
        if reason == "sendq" and self.framer is None:
            # TCP: drop what the reader never took. A WebSocket keeps it, so its
            # frames stay whole and the close frame can follow (see _finish).
            self.chunks.clear()
        reader = self.reader
        if reader is None:
            self._finish(reason)
        elif gevent.getcurrent() is reader:
            raise SessionEnd(reason)
        else:
            reader.kill(SessionEnd(reason), block=False)

    def run(self) -> None:
        """The connection greenlet's body: the login phase, then park (and return)."""
        reason = None
        try:
            lines = self._login_phase()
        except SessionEnd as end:
            reason = end.reason
        except LoginTimeout:
            reason = "timeout"
            self.write(P.LOGIN_TIMEOUT)
        except OSError as err:
            reason = _reason(err)
        except Exception:
            log.exception("session %d: server error", self.id)
            reason = "error"
        if reason is not None or self.ending is not None:
            final = self.ending or reason
            assert final is not None  # reasons are never empty strings
            self._finish(final)
            return
        self.reader = None
        self.sock.reading.start(self._on_readable)
        self._handle_lines(lines, False)
        if self.tls is not None and self.ending is None:
            self._on_plaintext(self.tls.read_buffered())
        self._watch_silence()
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
        graceful = reason in server.graceful
        if self.framer is not None:
            graceful = self._ws_close(reason) or graceful
        if graceful and (self.chunks or self.writer is not None):
            gevent.spawn(self._close_after_flush, reason)
        else:
            self._close(reason)

    def _ws_close(self, reason: str) -> bool:
        """A WebSocket's close frame for `reason` (websocket.CLOSE_FOR_REASON), after
        its last lines. `sendq` too: its queue is kept whole (abort), the frame goes
        after it, and like `exit` the flush is bounded by --shutdown-grace; True
        then, so the session closes after that flush."""
        frame = self.tls.close_frame(reason)  # type: ignore[union-attr]
        if not frame:
            return False
        if reason == "sendq":
            self.chunks.append(frame)
            self.qbytes += len(frame)
            return True
        self.write(frame, True)
        return False

    def _stop_reading(self) -> None:
        # Nothing waits on the read watcher while parked; stopping it drops its
        # callback (and with it this session) until reading resumes.
        self.sock.reading.stop()
        if self.silence is not None:
            self.silence.close()
            self.silence = None
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
        assert self.user is not None  # called for a session that logged in
        queue = self.user.queue
        if queue:
            if self.framer is not None:
                data = self.framer(queue)
                queue.clear()
                self.write(data, True)
                return
            data = b"".join(queue)
            queue.clear()
            self.write(data)

    # ------------------------------------------------------------ login phase

    def _login_phase(self) -> list[bytes]:
        """Prompt and read until a login; return the lines pipelined after it.

        Every line at the prompt, valid or not, pays the rate limit (the
        greenlet sleeps, so others run), and the loop gets a turn after every
        read and every LOGIN_YIELD_EVERY lines: a flood at the prompt costs
        only its sender time. Its replies go through `write`, so a flooder
        that does not read is cut off at --sendq like anyone else."""
        server = self.server
        max_line = server.config.max_line
        recv = self.tls.recv if self.tls is not None else self._recv_shared
        limiter = self.limiter
        self.write(P.PROMPT)
        with Timeout(server.config.login_timeout, LoginTimeout):
            while True:
                lines = self._read_login_lines(recv, max_line)
                for i, line in enumerate(lines):
                    delay = limiter.take() if limiter is not None else 0.0
                    if delay > 0:
                        gevent.sleep(delay)
                    elif i % LOGIN_YIELD_EVERY == LOGIN_YIELD_EVERY - 1:
                        gevent.sleep(LOGIN_YIELD_S)
                    done = self._try_login(line, max_line)
                    if done:
                        return lines[i + 1:]
                    if done is not None:  # None: the password prompt was sent instead
                        self.write(P.PROMPT)
                gevent.sleep(LOGIN_YIELD_S)

    def _read_login_lines(self, recv, max_line: int) -> list[bytes]:
        """The next complete lines at the prompt (perhaps none).

        A partial line followed by LEGACY_SILENCE_S of silence is a line, and
        makes this a legacy connection (see `legacy`)."""
        partial = framing.flush_partial(self.rest, self.discarding)
        data = None
        if partial:
            with Timeout(LEGACY_SILENCE_S, False):
                data = recv(READ_SIZE)
            if data is None:  # silence after a partial line: the seed client's way
                self.legacy = True
                self.rest = b""
                return partial
        else:
            data = recv(READ_SIZE)
        if not data:
            raise SessionEnd(self._eof())
        self.bytes_in += len(data)
        return self._frame(data, max_line)

    def _recv_shared(self, size: int) -> bytes:
        n = self.sock.recv_into(_RECV_BUF, size)
        return _RECV_VIEW[:n].tobytes()

    def _try_login(self, line: bytes, max_line: int) -> bool | None:
        """One line at the prompt: True once logged in, False to prompt again, None
        when the password prompt was sent (the next line is the password)."""
        text = self._decode(line, max_line)
        if text is None:
            if self.login is not None:
                self.login.waiting = None  # back to the username prompt
            return False
        book = self.server.accounts
        if not book.enabled:
            return self._guest_login(text)
        state = self.login
        if state is None:
            state = self.login = _Login()
        now = time.time()
        waiting = state.waiting
        if waiting is not None:
            state.waiting = None
            step = book.secret(waiting, text.strip(P.SEPARATORS), now)
        else:
            name, secret = book.split(text.strip(P.SEPARATORS))
            nfc = P.normalize(name.strip(P.SEPARATORS))
            problem = P.name_problem(nfc)
            if problem is not None:
                self.write(P.encode(P.invalid_username(problem)))
                return False
            step = book.begin(nfc, secret, now)
        if isinstance(step, A.AskPassword):
            state.waiting = step.name
            self.write(P.encode(P.password_prompt(step.name)))
            return None
        if isinstance(step, A.CheckPassword):
            check = step
            ok = self.server.hasher.verify(check.phc, check.password)
            step = book.checked(check, ok, time.time())
            if isinstance(step, A.LoggedIn) and needs_rehash(step.account.phc):
                # Made with older parameters: store today's, after this login.
                gevent.spawn(self.server.account_service.rehash, step.account, check.password)
        if isinstance(step, A.Guest):
            return self._guest_login(step.name)
        if isinstance(step, A.Refused):
            reply, close = state.attempts.refused(step)
            self.server.login_result(step.result or "refused")
            self.write(P.encode(reply))
            if close:
                raise SessionEnd("login_failed")
            return False
        return self._account_login(step)

    def _guest_login(self, text: str) -> bool:
        try:
            self.user = self.server.login(text, self)
        except LoginRefused as refused:
            self.write(P.encode(str(refused)))
            return False
        self.login = None
        self.server.session_logged_in(self, "guest")
        return True

    def _account_login(self, step: A.LoggedIn) -> bool:
        """The account's password or token was right: its older session, if any,
        ends (reason `replaced`) and this one takes the name at once."""
        account = step.account
        self.server.replace_session(account.name)
        try:
            self.user = self.server.login(account.name, self, account.key)
        except LoginRefused as refused:  # a guest of this name on another node
            self.write(P.encode(str(refused)))
            return False
        self.login = None
        self.server.session_logged_in(self, step.how, account)
        return True

    # ------------------------------------------------------------ parked reading

    def _read_ready(self) -> bytes | None:
        """One non-blocking read for an io watcher's callback: the bytes, or None
        (nothing there after all, or the session ended: EOF or a socket error)."""
        try:
            n = self.raw_recv_into(_RECV_BUF)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as err:
            self.abort(_reason(err))
            return None
        if n == 0:
            self.abort(self._eof())
            return None
        self.bytes_in += n
        return _RECV_VIEW[:n].tobytes()

    def _decrypt(self, data: bytes) -> tuple[bytes, bool] | None:
        """TLS: the plaintext `data` completes and whether the peer closed; None
        when the record is bad (the session is then ended, reason `error`)."""
        tls = self.tls
        assert tls is not None  # only TLS sessions call this
        try:
            return tls.decrypt(data)
        except ssl.SSLError:
            self.abort("error")
            return None

    def _on_readable(self) -> None:
        """The io watcher's callback, in the event loop: read what is there, handle it."""
        data = self._read_ready()
        if data is None:
            return
        if self.tls is not None:
            plain = self._decrypt(data)
            if plain is None:
                return
            data, eof = plain
            if eof:
                self._on_plaintext(data)
                self.abort(self._eof())
                return
        self._on_plaintext(data)
        self._watch_silence()
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
        """Run `lines` in order; stop at a rate-limit pause, a store wait, or once
        the replies pending for this session pass --sendq (it is then ended with
        reason `sendq` before another command runs: pipelined `history` or
        `groups` cannot make the server hold more than about --sendq for it)."""
        hub = self.server.hub
        commits = hub.commits
        user = self.user
        assert user is not None  # commands run only after the login phase
        limiter = self.limiter
        max_line = self.server.config.max_line
        sendq = self.server.config.sendq
        queue = user.queue
        counted = len(queue)
        pending = self.qbytes + sum(map(len, queue))
        for i, line in enumerate(lines):
            n = len(queue)
            if n != counted:  # the last line queued replies: count only the new ones
                pending += sum(map(len, islice(queue, counted, n)))
                counted = n
                if pending > sendq:
                    self.abort("sendq")
                    return
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
            if commits.uncommitted or commits.blocked or commits.queries:  # a reply waits
                # for the store (or Redis): see core/commits.py
                self._wait_for_store(lines[i + 1:])
                return
            if hub.account_work:  # `register` or `password`: a hash, then the disk
                self._wait_for_accounts(lines[i + 1:])
                return
            if hub.roles_work:  # a group's roles changed: the reply once stored
                work, hub.roles_work = hub.roles_work, []
                self._wait(self.server.save_roles, work, lines[i + 1:])
                return

    def _pause(self, delay: float, lines: list[bytes]) -> None:
        """Stop reading for `delay` seconds, then go on with `lines` (kept in order)."""
        self.sock.reading.stop()
        self.server.schedule_flush()
        timer = self.paused = self.server.loop.timer(delay)
        timer.start(self._resume, lines)

    def _resume(self, lines: list[bytes]) -> None:
        timer = self.paused
        assert timer is not None  # the rate limit's timer, which calls this
        timer.close()
        self.paused = None
        self._go_on(lines, True)

    def _go_on(self, lines: list[bytes], paid: bool) -> None:
        if self.ending is not None:
            return
        self._handle_lines(lines, paid)
        if self.ending is None and self.paused is None:
            self.sock.reading.start(self._on_readable)
            self._watch_silence()
        self.server.schedule_flush()

    # ------------------------------------------------------------ legacy clients

    def _watch_silence(self) -> None:
        """A legacy connection with a partial line: (re)start the silence timer."""
        if not self.legacy or self.ending is not None:
            return
        timer = self.silence
        if timer is not None:
            timer.stop()
        if not self.rest or self.discarding:
            return
        if timer is None:
            timer = self.silence = self.server.loop.timer(LEGACY_SILENCE_S)
        timer.start(self._on_silence)

    def _on_silence(self) -> None:
        """LEGACY_SILENCE_S without a byte after a partial line: it is a line.

        Not while reading is paused: the paused lines come first, and the
        timer is started again when reading resumes."""
        if self.ending is not None or self.paused is not None:
            return
        lines = framing.flush_partial(self.rest, self.discarding)
        if lines:
            self.rest = b""
            self._handle_lines(lines, False)
        self.server.schedule_flush()

    def _wait_for_store(self, lines: list[bytes]) -> None:
        """`create` (or a command naming a group being created, or `history` read
        from the store) answers once the store has: wait in a greenlet of our own,
        so this client's replies keep their order and nobody else waits.

        Meanwhile the socket is still read (`_hold`), so a peer that closes is
        noticed at once and its name is free, however long the store takes; what
        it sent is held, in order, for when the reply is in."""
        pending: Pending = self.server.hub.commits.take()
        self._wait(self.server.writer.settle, pending, lines)

    def _wait_for_accounts(self, lines: list[bytes]) -> None:
        """`register`/`password` answer after argon2 (hasher threads) and the store
        (writer thread): wait like for the store, in a greenlet of our own."""
        hub = self.server.hub
        work, hub.account_work = hub.account_work, []
        self._wait(self.server.do_account_work, work, lines)

    def _wait(self, job, arg, lines: list[bytes]) -> None:
        self.sock.reading.stop()
        self.server.schedule_flush()
        self.paused = gevent.spawn(self._settle, job, arg, lines)
        self.sock.reading.start(self._hold)

    def _hold(self) -> None:
        """The io watcher's callback while waiting for the store: EOF ends the session."""
        data = self._read_ready()
        if data is None:
            return
        if self.held is None:
            self.held = []
        self.held.append(data)
        self.held_bytes += len(data)
        if self.held_bytes >= HOLD_MAX:  # enough: the kernel's buffer holds the rest
            self.sock.reading.stop()

    def _settle(self, job, arg, lines: list[bytes]) -> None:
        try:
            job(arg)
        finally:
            self.paused = None
        if self.ending is not None:
            return
        self.sock.reading.stop()
        eof = False
        if self.held:
            data = b"".join(self.held)
            self.held = None
            self.held_bytes = 0
            if self.tls is not None:
                plain = self._decrypt(data)
                if plain is None:
                    return
                data, eof = plain
            if data:
                lines = lines + self._frame(data, self.server.config.max_line)
        self._go_on(lines, False)
        if eof and self.ending is None:
            self.abort(self._eof())

    def _eof(self) -> str:
        """The reason of an input that ended: `eof`, or for a WebSocket closed
        on a bad frame (1003, 1007, 1009, 1002) `error`."""
        return self.tls.end_reason if self.framer is not None else "eof"  # type: ignore[union-attr]

    # ------------------------------------------------------------ framing

    def _frame(self, data: bytes, max_line: int) -> list[bytes]:
        """Complete lines of `data` after what was left of the last read."""
        lines, self.rest, self.discarding = framing.split(self.rest, self.discarding, data,
                                                          max_line)
        return lines

    def _decode(self, line: bytes, max_line: int) -> str | None:
        """A framed line as text, or None after replying with its framing error."""
        try:
            return framing.decode(line, max_line)
        except FramingError as err:
            self.emit(err.reply)
            return None

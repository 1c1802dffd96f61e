"""A raw TCP chat client for Locust users: one socket, one reader greenlet.

Locust runs every user as a greenlet with the standard library monkey-patched,
so blocking socket calls here yield to the other users instead of stalling them.

The reader greenlet splits the stream into lines and routes them: deliveries
go straight to a callback (their latency is measured on arrival, not when a
task gets round to them), replies go into a queue that the single in-flight
command waits on. Every command fires one Locust request event, timed from
writing the line to reading the line that completes its reply.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

import gevent
from gevent.queue import Empty, Queue

from loadtest.protocol import Kind, Line, Notice, generic, parse_line

log = logging.getLogger(__name__)

REQUEST_TYPE = "chat"

# fire(name, response_time_ms, response_length, failure_reason_or_None)
Fire = Callable[[str, float, int, "str | None"], None]
OnDelivery = Callable[[Line, float, int], None]

_CLOSED = object()  # queue sentinel: the connection is gone


class ChatFailure(Exception):
    """The reason a chat request failed, as shown in Locust's failure table."""


def locust_fire(events) -> Fire:
    """Adapt Locust's request event hook to the client's `Fire` signature."""

    def fire(name: str, ms: float, length: int, reason: str | None) -> None:
        events.request.fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=ms,
            response_length=length,
            exception=ChatFailure(reason) if reason else None,
            context={},
        )

    return fire


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def ok_with(prefix: str) -> Callable[[Line], bool]:
    """A reply predicate: an `ok: <prefix>...` line."""
    return lambda line: line.kind is Kind.OK and line.text.startswith(prefix)


def of_kind(kind: Kind) -> Callable[[Line], bool]:
    return lambda line: line.kind is kind


def error_starting(*prefixes: str) -> Callable[[Line], bool]:
    """An accept_error predicate: errors whose text starts with one of `prefixes`."""
    return lambda line: line.text.startswith(prefixes)


class ChatClient:
    """One session with the server. Not reusable: make a new one to reconnect."""

    def __init__(
        self,
        host: str,
        port: int,
        fire: Fire,
        on_delivery: OnDelivery,
        reply_timeout: float = 10.0,
    ) -> None:
        self.host, self.port = host, port
        self.fire = fire
        self.on_delivery = on_delivery
        self.reply_timeout = reply_timeout
        self.name: str | None = None
        self.alive = False
        self._closing = False  # an EOF from the server is expected (after `exit`)
        self._closed = False  # we dropped the connection ourselves: report nothing more
        self._sock: socket.socket | None = None
        self._reader: gevent.Greenlet | None = None
        self._replies: Queue = Queue()
        # True while a command (or the connect) waits for its reply: any other reply-kind
        # line is unsolicited, and is reported as it arrives, not at the next command.
        self._waiting = False

    # --- session lifecycle -------------------------------------------------
    def connect(self) -> bool:
        """TCP connect and wait for the username prompt; fires `connect`."""
        start = time.perf_counter()
        try:
            self._sock = self._open_socket()
        except OSError as e:
            self.fire("connect", _ms_since(start), 0, f"connect failed: {e.strerror or e}")
            return False
        self.alive = True
        self._waiting = True
        self._reader = gevent.spawn(self._read_loop)
        line = self._next_reply()
        self._waiting = False
        if line is None or line.kind is not Kind.PROMPT:
            got = "no prompt" if line is None else line.raw
            self.fire("connect", _ms_since(start), 0, f"expected the username prompt, got: {got}")
            self.close()
            return False
        self.fire("connect", _ms_since(start), 0, None)
        return True

    def _open_socket(self) -> socket.socket:
        family, kind, proto, _, addr = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            # Our closed connections sit in TIME-WAIT on ephemeral ports, and the
            # default chat port 50000 is inside Linux's ephemeral range: without
            # SO_REUSEADDR on *this* side too, a server restarted within a minute of
            # a load test can fail to bind with "Address already in use".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.reply_timeout)
            sock.connect(addr)
            sock.settimeout(None)  # the reader blocks; timeouts live in the queue waits
        except OSError:
            sock.close()
            raise
        return sock

    def login(self, name: str) -> bool:
        """Send the name and wait for `you joined the group ...`; fires `login`."""
        reply = self.call(
            "login", name, of_kind(Kind.JOINED_GENERAL), partial=of_kind(Kind.CONNECTED)
        )
        if reply is None:
            return False
        self.name = name
        return True

    def exit(self) -> None:
        """Polite logout: `exit`, wait for `ok: bye`, close; fires `exit`."""
        self._closing = True  # the close that follows `ok: bye` is expected
        self.call("exit", "exit", ok_with("bye"))
        self.close()

    def close(self) -> None:
        """Drop the connection without a goodbye (used on stop and after failures)."""
        self._closing = self._closed = True
        self.alive = False
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        reader, self._reader = self._reader, None
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=False)

    def send_quietly(self, line: str) -> None:
        """Write a line and report nothing from now on (`exit` while stopping).

        The session is being abandoned: whatever the server still sends (the reply
        to a command the stop interrupted, `ok: bye`) is nobody's failure.
        """
        self._closing = self._closed = True
        try:
            if self._sock is not None:
                self._sock.sendall((line + "\n").encode())
        except OSError:
            pass

    # --- commands ----------------------------------------------------------
    def call(
        self,
        name: str,
        line: str,
        done: Callable[[Line], bool],
        *,
        fence: bool = False,
        accept_error: Callable[[Line], bool] | None = None,
        partial: Callable[[Line], bool] | None = None,
    ) -> Line | None:
        """Send one command, wait for its reply, fire one request event named `name`.

        Returns the line that completed the reply, or None after a failure. An `error:`
        reply is a failure unless `accept_error` accepts it (judged when it arrives);
        lines before the last that `partial` accepts are part of the reply.

        `public` and `private` have no reply on success, so with `fence` a `ping`
        follows the command: the server answers in order, so `ok: pong` proves the
        command was processed, and any error for it arrives before the pong.
        """
        if not self.alive:
            self.fire(name, 0.0, 0, "not connected")
            return None
        self._report_stale()
        start = time.perf_counter()
        wire = f"{line}\nping\n" if fence else f"{line}\n"
        self._waiting = True
        try:
            self._sock.sendall(wire.encode())
        except OSError as e:
            self._waiting = False
            self._lost(name, start, f"send failed: {e.strerror or e}")
            return None
        if fence:
            done = ok_with("pong")
        try:
            reply = self._await_reply(name, start, done, fence, accept_error, partial)
        finally:
            self._waiting = False
        # Not in the finally: when Locust kills the user mid-wait (the test is over),
        # its reply may sit in the queue already, and that is no failure.
        self._report_stale()  # lines that arrived behind the reply, still queued
        return reply

    def _await_reply(self, name, start, done, fence, accept_error, partial) -> Line | None:
        error: Line | None = None
        length = 0
        while True:
            reply = self._next_reply()
            if reply is None:
                self._lost(name, start, "no reply (timeout or connection closed)")
                return None
            length += len(reply.raw) + 1
            if reply.kind is Kind.ERROR and error is None:
                error = reply
                if not fence:
                    break
            elif reply.kind is Kind.ERROR:
                # One command, one error at most: a second one means the server answered
                # something we did not send, or answered twice.
                self.fire(name, _ms_since(start), length, f"second error: {generic(reply.raw)}")
                return None
            elif done(reply):
                break
            elif not fence and not (partial and partial(reply)):
                # Any other line here means replies are out of step with commands.
                reason = f"unexpected reply: {generic(reply.raw)}"
                self.fire(name, _ms_since(start), length, reason)
                return None
        if error is not None and not (accept_error and accept_error(error)):
            self.fire(name, _ms_since(start), length, generic(error.raw))
            return None
        self.fire(name, _ms_since(start), length, None)
        return error or reply

    def _next_reply(self) -> Line | None:
        try:
            item = self._replies.get(timeout=self.reply_timeout)
        except Empty:
            return None
        if item is _CLOSED:
            self._replies.put(_CLOSED)  # later waiters must see it too
            return None
        return item

    def _report_stale(self) -> None:
        """Replies nobody asked for (an `error:` out of the blue) are failures too."""
        while not self._replies.empty():
            item = self._replies.get_nowait()
            if item is _CLOSED:
                self._replies.put(_CLOSED)
                return
            self.fire("unexpected", 0.0, len(item.raw), f"unsolicited line: {generic(item.raw)}")

    def _lost(self, name: str, start: float, reason: str) -> None:
        """After a timeout or broken pipe the session's state is unknown: drop it."""
        if not self._closed:
            self.fire(name, _ms_since(start), 0, reason)
        self.close()

    # --- reader greenlet ---------------------------------------------------
    def _read_loop(self) -> None:
        reason = "connection closed by the server"
        try:
            stream = self._sock.makefile("rb")
            for raw in stream:
                if not raw.endswith(b"\n"):
                    break  # an unterminated last line is discarded, as the protocol says
                now = time.time()
                text = raw[:-1].decode("utf-8", "replace")
                self._route(parse_line(text), now, len(raw))
        except OSError as e:
            reason = f"connection error: {e.strerror or e}"
        finally:
            if not self._closing:
                self.fire("connection", 0.0, 0, reason)
            self.alive = False
            self._replies.put(_CLOSED)

    def _route(self, line: Line, now: float, nbytes: int) -> None:
        if self._closed:
            return  # abandoned (see send_quietly): the reader is only draining
        if line.kind in (Kind.PUBLIC, Kind.PRIVATE):
            self.on_delivery(line, now, nbytes)
        elif line.kind is Kind.NOTICE:
            self._notice(line)
        elif line.kind is Kind.UNKNOWN:
            self.fire("parse", 0.0, nbytes, f"unparseable line: {generic(line.raw)[:80]}")
        elif self._waiting:
            self._replies.put(line)
        else:
            self.fire("unexpected", 0.0, nbytes, f"unsolicited line: {generic(line.raw)}")

    def _notice(self, line: Line) -> None:
        # Join/leave notices and announcements are expected background noise; being
        # kicked or the server shutting down mid-test is not. The close that follows
        # is part of the same failure, so it is not reported again.
        if line.notice in (Notice.KICKED, Notice.SHUTDOWN):
            self._closing = True
            self.fire("connection", 0.0, 0, generic(line.raw))

"""Accepting connections from the event loop, with public gevent API only.

The listening socket is a plain non-blocking stdlib socket; an io watcher on
it calls `Acceptor._on_readable` from the loop. Each accepted socket is
decided on right there (`admit`), before a greenlet or a session exists for
it: a refused connection costs accept, one non-blocking send and close. An
admitted one is handed, as a non-blocking stdlib socket, to `handle(sock,
address, key)` in a greenlet of its own; the handler owns the socket from
then on (a logged-in session outlives its greenlet, so the acceptor never
closes it).

At most ACCEPT_BATCH admissions and ACCEPT_BATCH refusals are handled per
callback, so a flood cannot hold the loop: the socket stays readable and the
loop comes back to it after serving everyone else. An accept that fails for
lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) pauses accepting with a
back-off from 10 ms to 1 s, as gevent's StreamServer did, instead of spinning.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import gevent

log = logging.getLogger("chatsrv.server")

ACCEPT_BATCH = 100
MIN_DELAY_S = 0.01
MAX_DELAY_S = 1.0

Admit = Callable[[str], tuple[bytes | None, str | None]]
Handle = Callable[[socket.socket, tuple, "str | None"], None]


def listening_socket(host: str, port: int, backlog: int = 4096,
                     reuse_port: bool = False) -> socket.socket:
    """A bound, listening, non-blocking TCP socket. IPv6 hosts listen dual-stack
    (the kernel's default, as before), so `--host ::` takes IPv4 clients too.
    `reuse_port`: several processes share the port (--workers)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Acceptor:
    def __init__(self, sock: socket.socket, handle: Handle, admit: Admit) -> None:
        self.sock = sock
        self._handle = handle
        self._admit = admit
        self._loop = gevent.get_hub().loop
        self._watcher = self._loop.io(sock.fileno(), 1)  # 1 = READ
        self._pause: object | None = None  # the back-off timer after an accept error
        self._delay = MIN_DELAY_S
        self.closed = False

    @property
    def server_port(self) -> int:
        return self.sock.getsockname()[1]

    def start(self) -> None:
        self._watcher.start(self._on_readable)

    def close(self) -> None:
        """Stop accepting; connections already handed over are not touched."""
        if self.closed:
            return
        self.closed = True
        self._watcher.stop()
        self._watcher.close()
        if self._pause is not None:
            self._pause.close()  # type: ignore[attr-defined]
            self._pause = None
        self.sock.close()

    def _on_readable(self) -> None:
        admitted = refused = 0
        while admitted < ACCEPT_BATCH and refused < ACCEPT_BATCH:
            try:
                conn, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                self._back_off(err)
                return
            self._delay = MIN_DELAY_S
            try:
                line, key = self._admit(address[0])
            except Exception:
                log.exception("server error admitting a connection")
                line, key = b"", None
            if line is None:
                admitted += 1
                conn.setblocking(False)
                gevent.spawn(self._handle, conn, address, key)
            else:
                refused += 1
                _refuse(conn, line)

    def _back_off(self, err: OSError) -> None:
        """Out of descriptors or memory: stop accepting for a while, doubling."""
        log.warning("accept failed: %s; pausing accepting for %.2f s", err, self._delay)
        self._watcher.stop()
        timer = self._pause = self._loop.timer(self._delay)
        timer.start(self._resume)
        self._delay = min(MAX_DELAY_S, self._delay * 2)

    def _resume(self) -> None:
        if self._pause is not None:
            self._pause.close()  # type: ignore[attr-defined]
            self._pause = None
        if not self.closed:
            self._watcher.start(self._on_readable)


def _refuse(conn: socket.socket, line: bytes) -> None:
    """Send the refusal line without ever waiting (a fresh socket's buffer is empty), close."""
    try:
        if line:
            conn.send(line, socket.MSG_DONTWAIT)
    except OSError:
        pass
    finally:
        conn.close()

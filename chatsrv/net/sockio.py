"""A client socket as the session uses it: a plain non-blocking stdlib socket
and the io watchers that wait on it, on gevent's public API only.

The flush path sends with one syscall on the raw socket and never switches
greenlets. Waiting is for the few places that must: the login phase's reads
and the TLS handshake (in the connection's own greenlet), and a writer
greenlet under back-pressure. They wait with `Hub.wait` on watchers this
object owns, so `close` can stop them first and only then close the
descriptor: no watcher is ever left on a closed (perhaps reused) fd. A
parked session starts `reading` with its own callback instead of waiting.
"""

from __future__ import annotations

import socket

import gevent

READ = 1
WRITE = 2


class SockIO:
    __slots__ = ("sock", "reading", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock  # non-blocking
        self.reading = gevent.get_hub().loop.io(sock.fileno(), READ)
        self.writing = None  # made on the first wait for room: most sessions never need it

    def fileno(self) -> int:
        return self.sock.fileno()

    def wait_readable(self) -> None:
        gevent.get_hub().wait(self.reading)

    def wait_writable(self) -> None:
        hub = gevent.get_hub()
        if self.writing is None:
            self.writing = hub.loop.io(self.sock.fileno(), WRITE)
        hub.wait(self.writing)

    def recv(self, size: int) -> bytes:
        """Blocking for this greenlet only: b"" at end of stream."""
        while True:
            try:
                return self.sock.recv(size)
            except (BlockingIOError, InterruptedError):
                self.wait_readable()

    def recv_into(self, buffer, size: int) -> int:
        while True:
            try:
                return self.sock.recv_into(buffer, size)
            except (BlockingIOError, InterruptedError):
                self.wait_readable()

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                self.wait_writable()
                continue
            view = view[sent:]

    def close(self) -> None:
        """Stop the watchers, then close the descriptor. A greenlet still waiting
        on one stays suspended until it is killed (the session kills its writer)."""
        self.reading.stop()
        if self.writing is not None:
            self.writing.stop()
        self.sock.close()

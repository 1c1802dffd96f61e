"""TLS over memory BIOs, so a TLS session moves bytes exactly like a plain one.

gevent's SSLSocket lets only one greenlet wait on the socket at a time; our
reader waits in recv while the flush writes from the loop, which stalls TLS
writes until the next read. With `SSLObject` + `MemoryBIO` the encryption is
pure computation: the reader feeds ciphertext in, `encrypt` hands ciphertext
out, and the session's one-syscall flush path sends it like any other bytes.
"""

from __future__ import annotations

import ssl


class TlsChannel:
    __slots__ = ("sock", "incoming", "outgoing", "obj")

    def __init__(self, ctx: ssl.SSLContext, sock) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def handshake(self) -> None:
        """Run the server handshake over the (gevent) socket; raises OSError/SSLError."""
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send_pending()
                # A peer that hangs up mid-handshake (e.g. it rejected our
                # certificate) must end it; retrying would spin the event loop.
                if not self._feed():
                    raise ConnectionResetError("peer closed during TLS handshake") from None
        self._send_pending()

    def recv(self, size: int) -> bytes:
        """Plaintext, or b"" at the end of the stream (close_notify or TCP EOF)."""
        while True:
            try:
                return self.obj.read(size)
            except ssl.SSLWantReadError:
                if not self._feed():
                    return b""
            except ssl.SSLZeroReturnError:
                return b""

    def decrypt(self, data: bytes) -> tuple[bytes, bool]:
        """The plaintext that ciphertext `data` completes, and whether the peer closed."""
        self.incoming.write(data)
        return self._read_all()

    def read_buffered(self) -> bytes:
        """Plaintext already decrypted but not yet read (left by `recv`'s size limit)."""
        return self._read_all()[0]

    def _read_all(self) -> tuple[bytes, bool]:
        parts: list[bytes] = []
        while True:
            try:
                chunk = self.obj.read(65536)
            except ssl.SSLWantReadError:
                return b"".join(parts), False
            except ssl.SSLZeroReturnError:
                return b"".join(parts), True
            if not chunk:
                return b"".join(parts), True
            parts.append(chunk)

    def encrypt(self, data: bytes) -> bytes:
        """Ciphertext for `data`, with any record the reader produced first (in order)."""
        self.obj.write(data)
        return self.outgoing.read()

    def _feed(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.incoming.write(data)
        return True

    def _send_pending(self) -> None:
        if self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())

"""The WebSocket door (PROTOCOL.md v2, "WebSocket door and the browser client").

The web port speaks just enough HTTP/1.1 for two requests: `GET /` (and the
client's static files) and `GET /ws`, which wsproto (sans-I/O) upgrades. An
upgraded connection becomes a `Session` like a TCP one: `WsChannel` plugs in
where `TlsChannel` does (deframe on read, frame on write), so login, limits,
the send queue, the rate limit and metrics are the same code.

Frames: each server line is one text frame without its LF; a client text
frame holds one or more lines separated by LF. A binary message closes with
1003, a message over --max-line bytes with 1009, invalid UTF-8 with 1007
(wsproto's own check). The server pings after PING_IDLE_S of silence and
closes a connection that answered nothing for PING_DEAD_S.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import struct
import time
from collections.abc import Callable
from importlib import resources

from wsproto import ConnectionType, WSConnection  # WSConnection: typing (unit tests)
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

log = logging.getLogger("chatsrv.web")

HEAD_MAX = 8192  # bytes of an HTTP request head
PING_IDLE_S = 25.0
PING_DEAD_S = 60.0
CHECK_EVERY_S = 5.0

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011

# The close frame a session ending for each disconnect reason sends (PROTOCOL.md
# "Session end"; docs/protocol.md lists them). `eof` has none of its own: the
# peer closed (its close was answered) or vanished. `sendq` is 1008, not 1013
# ("try again later" is for an overloaded server): the client did not read.
CLOSE_FOR_REASON = {
    "exit": (CLOSE_NORMAL, "bye"),
    "replaced": (CLOSE_NORMAL, "logged in from another connection"),
    "kicked": (CLOSE_POLICY, "disconnected by an administrator"),
    "sendq": (CLOSE_POLICY, "send queue full"),
    "timeout": (CLOSE_POLICY, "timeout"),
    "login_failed": (CLOSE_POLICY, "login failed"),
    "shutdown": (CLOSE_GOING_AWAY, "server shutting down"),
    "error": (CLOSE_SERVER_ERROR, "error"),
}

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    # The page names it; /favicon.ico too, for what asks without reading the page.
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),
}
SECURITY_HEADERS = (
    b"Content-Security-Policy: default-src 'self'\r\n"
    b"X-Content-Type-Options: nosniff\r\n"
    b"X-Frame-Options: DENY\r\n"
    b"Referrer-Policy: no-referrer\r\n"
    b"Cache-Control: no-cache\r\n"
)


# One receive buffer for the blocking reads before a session parks (the request
# head, the login phase), as session.py has for TCP: a fresh bytes of the read
# size, shrunk to what came, fragments the heap (it showed in `bench idle-ws`).
_RECV_BUF = bytearray(HEAD_MAX)
_RECV_VIEW = memoryview(_RECV_BUF)


def recv_shared(sock, size: int) -> bytes:
    """`sock.recv(size)` (a SockIO: waits for this greenlet only) into the shared
    buffer, copied out before anything else runs."""
    n = sock.recv_into(_RECV_BUF, min(size, HEAD_MAX))
    return _RECV_VIEW[:n].tobytes()


def static_file(name: str) -> bytes:
    return resources.files("chatsrv.web").joinpath(name).read_bytes()


def response(status: str, ctype: str, body: bytes, head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 response; `head_only` (a HEAD request): without the body,
    its Content-Length as GET's."""
    return (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode() + \
        SECURITY_HEADERS + b"\r\n" + (b"" if head_only else body)


def error_response(status: str, line: str, head_only: bool = False) -> bytes:
    return response(status, "text/plain; charset=utf-8", line.encode() + b"\n", head_only)


def text_frame(line: bytes) -> bytes:
    """One unmasked server text frame for `line` (UTF-8, no LF)."""
    n = len(line)
    if n < 126:
        return bytes((0x81, n)) + line
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + line
    return struct.pack("!BBQ", 0x81, 127, n) + line


# Frames made during one flush, by line: a `public` delivery is one bytes object
# appended to every member's queue, and the flush frames those queues one after
# another, so one frame serves the whole fan-out, however many deliveries each
# queue holds (a bytes object caches its hash: a lookup is cheap). The server
# empties it after each flush (`forget_frames`); FRAME_CACHE_MAX bounds it anyway.
FRAME_CACHE_MAX = 4096
_frames: dict[bytes, bytes] = {}
# And whole queues: receivers of the same deliveries hold equal queues (the same
# objects in the same order), framed once per flush (a tuple of bytes hashes in C).
_batches: dict[tuple[bytes, ...], bytes] = {}


def frame_line(line: bytes) -> bytes:
    """The text frame(s) of one queued item (LF-ended lines), cached."""
    frame = _frames.get(line)
    if frame is not None:
        return frame
    body = line[:-1] if line.endswith(b"\n") else line
    # A queued item is one line, but a few replies queue several lines at once.
    frame = frame_lines(line) if b"\n" in body else text_frame(body)
    if len(_frames) >= FRAME_CACHE_MAX:
        _frames.clear()
    _frames[line] = frame
    return frame


def forget_frames() -> None:
    """The end of a flush: its deliveries will not be framed again."""
    _frames.clear()
    _batches.clear()


def unmask(payload: bytes, key: bytes) -> bytes:
    """A client frame's payload XOR its 4-byte key, as one big-int operation (C)."""
    n = len(payload)
    mask = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(
        n, "little")


def frame_lines(data: bytes) -> bytes:
    """Server lines (each ending in LF) as text frames, one per line."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join(map(text_frame, lines))


class Head:
    """An HTTP request head: method, path and the headers (names lower-case; a
    header sent several times is its values joined by `, `, as RFC 9110 allows
    for lists such as X-Forwarded-For). Raises ValueError when malformed."""

    __slots__ = ("method", "path", "headers", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        text = raw.decode("latin-1")
        first, _, rest = text.partition("\r\n")
        parts = first.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise ValueError("bad request line")
        if not parts[0].isalpha() or not parts[1].startswith("/"):
            raise ValueError("bad request line")
        self.method, self.path = parts[0], parts[1].split("?", 1)[0]
        self.headers: dict[str, str] = {}
        for line in rest.split("\r\n"):
            if not line:
                continue
            name, sep, value = line.partition(":")
            name = name.lower()
            if not sep or not name or name != name.strip():
                raise ValueError("bad header")
            value = value.strip()
            old = self.headers.get(name)
            self.headers[name] = value if old is None else f"{old}, {value}"


def read_head(recv: Callable[[int], bytes]) -> tuple[bytes, bytes] | None:
    """The request head (up to the blank line, included) and any bytes after it;
    None when the peer closed first. Raises ValueError past HEAD_MAX bytes
    without a blank line (answered 400 like any malformed head)."""
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            return data[:end + 4], data[end + 4:]
        if len(data) > HEAD_MAX:
            raise ValueError(f"request head over {HEAD_MAX} bytes")
        chunk = recv(HEAD_MAX)
        if not chunk:
            return None
        data += chunk


def origin_allowed(head: Head, allowed: frozenset[str], scheme: str = "http") -> bool:
    """No Origin (not a browser), the page's own origin, or one of --web-origins."""
    origin = head.headers.get("origin")
    if origin is None:
        return True
    origin = origin.rstrip("/").lower()
    host = head.headers.get("host", "").lower()
    return origin == f"{scheme}://{host}" or origin in allowed


class WsChannel:
    """A WebSocket session's framing, in the place of TlsChannel: `encrypt` frames
    what the session writes, `decrypt` turns received bytes into lines (LF-ended)
    for core.framing, `recv` does the same for the blocking login phase.

    Control frames (pong, ping, close) are handed to `send` (the session's write
    path, so they keep their place in the byte stream); `send` and `close` are
    set by the server once the session exists."""

    __slots__ = ("ws", "sock", "tls", "max_line", "size", "closing", "send", "last_rx",
                 "pinged", "on_dead", "out", "partial", "end_reason", "raw",
                 "in_wsproto")

    def __init__(self, ws: WSConnection | Connection | None, sock, max_line: int,
                 tls=None) -> None:
        self.ws = ws
        self.sock = sock
        # WSS: the TlsChannel under the frames (encrypt after framing, decrypt
        # before deframing); None for plain ws.
        self.tls = tls
        # The session's disconnect reason once the input is over: `eof` for the
        # peer's close (or a vanished peer), `error` for a frame we closed on.
        self.end_reason = "eof"
        self.raw = b""  # the start of a frame not complete yet (fast path, see _plain)
        self.in_wsproto = 0  # bytes of a frame wsproto has begun and must get the rest of
        self.max_line = max_line
        self.size = 0  # bytes of the text message being received
        self.closing = False
        self.send: Callable[[bytes], None] | None = None
        self.on_dead: Callable[[], None] | None = None
        self.last_rx = time.monotonic()
        self.pinged: float | None = None
        # Lists only while there is something in them: an idle session pays for neither.
        self.out: list[bytes] | None = None  # control frames for the next write
        self.partial: list[bytes] | None = None  # the fragments of an unfinished message

    # ---------------------------------------------------------------- output

    def encrypt(self, data: bytes) -> bytes:
        """What goes on the wire for lines `data`: frames (after any pending
        control frame), TLS records for WSS."""
        framed = frame_lines(data) if data else b""
        if self.out:
            framed = b"".join(self.out) + framed
            self.out = None
        return self.tls.encrypt(framed) if self.tls is not None else framed

    def frame_queue(self, queue: list[bytes]) -> bytes:
        """A user's queued lines (each one line, LF-ended) as wire bytes, for the flush."""
        if len(queue) == 1:
            framed = frame_line(queue[0])
        else:
            key = tuple(queue)
            framed = _batches.get(key)  # type: ignore[assignment]
            if framed is None:
                get = _frames.get
                framed = b"".join([get(line) or frame_line(line) for line in queue])
                if len(_batches) >= FRAME_CACHE_MAX:
                    _batches.clear()
                _batches[key] = framed
        if self.out:
            framed = b"".join(self.out) + framed
            self.out = None
        return self.tls.encrypt(framed) if self.tls is not None else framed

    # The session's `framer` is the channel itself: a bound method each would cost
    # an idle session 64 bytes.
    __call__ = frame_queue

    def _control(self, data: bytes) -> None:
        if self.out is None:
            self.out = []
        self.out.append(data)
        if self.send is not None:
            self.send(b"")  # the session's write: encrypt puts the frame in order
        else:
            self.sock.sendall(self.encrypt(b""))

    def close(self, code: int, reason: str = "") -> None:
        """Close for bad input from the peer: the session ends with reason `error`."""
        if self.closing or not self._open():
            return
        self.closing = True
        self.end_reason = "error"
        self._control(self._proto().send(CloseConnection(code=code, reason=reason)))

    def close_frame(self, reason: str) -> bytes:
        """Wire bytes of the close frame for a session ending with disconnect reason
        `reason` (CLOSE_FOR_REASON), after any pending control frame; b"" when
        there is none to send (the peer's input ended it, or a close went already)."""
        code = CLOSE_FOR_REASON.get(reason)
        if code is None or self.closing or not self._open():
            return b""
        self.closing = True
        self.out = [*(self.out or ()), self._proto().send(CloseConnection(code=code[0],
                                                                          reason=code[1]))]
        return self.encrypt(b"")

    # ---------------------------------------------------------------- input

    def decrypt(self, data: bytes) -> tuple[bytes, bool]:
        """The lines that wire bytes `data` complete (each ended by LF), and whether
        the connection is over (a close from the peer, or one we sent for bad input).
        WSS: raises ssl.SSLError for a bad record, like TlsChannel."""
        if self.tls is None:
            return self._plain(data)
        data, eof = self.tls.decrypt(data)
        lines, over = self._plain(data)
        return lines, over or eof

    def _plain(self, data: bytes) -> tuple[bytes, bool]:
        """Plaintext bytes in, lines out.

        The common frame (a whole masked text message, FIN set, outside a
        fragmented message) is unmasked and checked here: wsproto's per-frame
        machinery cost a third of the server's time in `make bench fanout-ws`.
        Every other frame (control frames, fragments, binary, unmasked, invalid
        UTF-8) goes to wsproto whole, as do frames over --max-line (in pieces as
        they arrive, so its size check closes them early): wsproto only ever
        holds a partial frame when `in_wsproto` says how much of it is to come."""
        self.last_rx = time.monotonic()
        self.pinged = None
        if self.closing:
            return b"", True
        out: list[bytes] = []
        try:
            if self.in_wsproto:
                take = min(self.in_wsproto, len(data))
                self.in_wsproto -= take
                if self._wsproto(data[:take], out):
                    return b"".join(out), True
                data = data[take:]
            if self.raw:
                data, self.raw = self.raw + data, b""
            over = self._frames(data, out)
        except LocalProtocolError:  # we answered a peer already closing: over
            over = True
        return b"".join(out), over

    def _frames(self, data: bytes, out: list[bytes]) -> bool:
        i, n = 0, len(data)
        while n - i >= 2:
            b0, b1 = data[i], data[i + 1]
            length, h = b1 & 0x7F, 2
            if length == 126:
                if n - i < 4:
                    break
                length, h = int.from_bytes(data[i + 2:i + 4], "big"), 4
            elif length == 127:
                if n - i < 10:
                    break
                length, h = int.from_bytes(data[i + 2:i + 10], "big"), 10
            if b1 & 0x80:
                h += 4
            end = i + h + length
            if end > n:  # incomplete
                if length > self.max_line:  # wsproto streams it and closes at the limit
                    self.in_wsproto = end - n
                    return self._wsproto(data[i:], out)
                break
            if b0 == 0x81 and b1 & 0x80 and not self.partial and length <= self.max_line:
                payload = unmask(data[i + h:end], data[i + h - 4:i + h])
                try:
                    payload.decode()
                except UnicodeDecodeError:  # wsproto closes with 1007
                    if self._wsproto(data[i:end], out):
                        return True
                else:
                    out.append(payload)
                    out.append(b"\n")
            elif self._wsproto(data[i:end], out):
                return True
            i = end
        self.raw = data[i:]
        return False

    def _wsproto(self, data: bytes, out: list[bytes]) -> bool:
        self._proto().receive_data(data)
        return self._events(out)

    def _proto(self) -> Connection | WSConnection:
        """wsproto's frame layer, made on first need: most sessions never send it
        a frame (the fast path in _plain), and an idle one should not pay for it
        (1.7 kB; the handshake's WSConnection, 4.6 kB, is dropped after the 101)."""
        if self.ws is None:
            self.ws = Connection(ConnectionType.SERVER)
        return self.ws

    def _open(self) -> bool:
        return self.ws is None or self.ws.state is ConnectionState.OPEN

    def _events(self, out: list[bytes]) -> bool:
        assert self.ws is not None  # _wsproto made it
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                chunk = event.data.encode()
                self.size += len(chunk)
                if self.size > self.max_line:
                    self.close(CLOSE_TOO_BIG, "message too big")
                    return True
                # A message's fragments wait here until it is complete (at most
                # --max-line bytes), so the session never sees half a line.
                if self.partial is None:
                    self.partial = []
                self.partial.append(chunk)
                if event.message_finished:
                    out.extend(self.partial)
                    out.append(b"\n")
                    self.partial = None
                    self.size = 0
            elif isinstance(event, BytesMessage):
                self.close(CLOSE_UNSUPPORTED, "text frames only")
                return True
            elif isinstance(event, Ping):
                self._control(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self.closing = True
                    self._control(self.ws.send(event.response()))
                else:  # a protocol error wsproto found (1002, 1007 for bad UTF-8)
                    self.close(event.code, event.reason or "")
                    self.end_reason = "error"
                return True
        return False

    def recv(self, size: int) -> bytes:
        """Lines for the login phase (blocking this greenlet); b"" when it is over."""
        if self.closing:
            return b""
        lines, over = self._plain(b"")  # frames that came with the handshake
        if lines or over:
            return lines
        recv = self.tls.recv if self.tls is not None else (
            lambda size: recv_shared(self.sock, size))
        while True:
            data = recv(size)
            if not data:
                return b""
            lines, over = self._plain(data)
            if over:
                return lines  # b"" ends the login; else the next recv returns b""
            if lines:
                return lines

    def read_buffered(self) -> bytes:
        """WSS: the lines of plaintext TLS decrypted but the login phase left unread."""
        if self.tls is None:
            return b""
        return self._plain(self.tls.read_buffered())[0]

    # ---------------------------------------------------------------- pings

    def _check(self) -> bool:
        """Every CHECK_EVERY_S (the server's one timer for all WebSocket sessions:
        a timer each cost an idle session ~300 bytes): ping after PING_IDLE_S of
        silence; True when the peer answered nothing for PING_DEAD_S (then
        `on_dead` too, if set)."""
        if self.closing or not self._open():
            return False
        now = time.monotonic()
        if self.pinged is not None:
            if now - self.pinged >= PING_DEAD_S - PING_IDLE_S and now - self.last_rx >= PING_DEAD_S:
                self.closing = True  # once
                if self.on_dead is not None:
                    self.on_dead()
                return True
        elif now - self.last_rx >= PING_IDLE_S:
            self.pinged = now
            self._control(self._proto().send(Ping(payload=b"chatsrv")))
        return False


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a handshake's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def handshake_problem(head: Head) -> str | None:
    """Why `head` is not an RFC 6455 opening handshake (section 4.2.1), or None."""
    headers = head.headers
    if head.method != "GET":
        return "not GET"
    if headers.get("upgrade", "").lower() != "websocket":
        return "no Upgrade: websocket"
    if "upgrade" not in (t.strip().lower() for t in headers.get("connection", "").split(",")):
        return "no Connection: upgrade"
    if headers.get("sec-websocket-version") != "13":
        return "Sec-WebSocket-Version is not 13"
    try:
        if len(base64.b64decode(headers.get("sec-websocket-key", ""), validate=True)) != 16:
            return "bad Sec-WebSocket-Key"
    except ValueError:
        return "bad Sec-WebSocket-Key"
    return None


def upgrade(head: Head, rest: bytes, sock, max_line: int, tls=None) -> WsChannel | None:
    """Answer the handshake (101, no extension nor subprotocol) and return the
    channel, or None after a 400. Done here rather than by wsproto's WSConnection,
    whose handshake objects (h11's) cost an idle session ~1.5 kB of fragmented
    heap in `bench idle-ws`. `tls`: the connection's TlsChannel (WSS), which every
    byte goes through."""
    send = sock.sendall if tls is None else (lambda data: sock.sendall(tls.encrypt(data)))
    problem = handshake_problem(head)
    if problem is not None:
        log.info("websocket handshake refused: %s", problem)
        send(error_response("400 Bad Request", "error: not a WebSocket handshake"))
        return None
    send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Accept: "
         + accept_key(head.headers["sec-websocket-key"]).encode() + b"\r\n\r\n")
    channel = WsChannel(None, sock, max_line, tls)  # the frame layer comes when needed
    channel.raw = rest  # frames sent with the handshake: the first read's
    return channel

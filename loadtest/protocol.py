"""Pure parsing for the chatsrv wire protocol (PROTOCOL.md), as seen by a client.

Nothing here touches sockets, gevent or Locust, so it can be unit-tested in any
process; importing Locust monkey-patches the interpreter, which other tests must
not suffer.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from enum import Enum

DEFAULT_PORT = 50000


class Kind(str, Enum):
    """One value per line kind listed under "Line kinds, for parsers"."""

    PROMPT = "prompt"  # enter a username:
    CONNECTED = "connected"  # connected! welcome <user>
    JOINED_GENERAL = "joined"  # you joined the group <group>  (end of login)
    OK = "ok"
    ERROR = "error"
    GROUPS = "groups"
    USERS = "users"
    INFO = "info"  # info: <group> owner ... (group roles)
    PUBLIC = "public"  # [public group <g> from <u>] <text>
    PRIVATE = "private"  # [private from <u>] <text>
    HISTORY = "history"  # [history group <g> at <t> from <u>] <text>
    NOTICE = "notice"  # * <text>
    UNKNOWN = "unknown"  # anything else: a protocol violation by the server


class Notice(str, Enum):
    """Sub-kinds of `* ` lines; the client reacts differently to each."""

    JOINED = "joined"
    LEFT = "left"
    KICKED = "kicked"
    SHUTDOWN = "shutdown"
    ANNOUNCEMENT = "announcement"
    OTHER = "other"


@dataclass(frozen=True)
class Line:
    """One parsed server line. Fields not relevant to the kind stay empty."""

    kind: Kind
    raw: str
    text: str = ""  # ok/error/notice text, or a delivery's message
    group: str = ""
    user: str = ""  # sender of a delivery, subject of a notice, or the logged-in name
    time: str = ""  # history timestamp, as sent
    names: tuple[str, ...] = field(default=())  # groups:/users: listing
    notice: Notice | None = None


# Names never contain whitespace or "]" (PROTOCOL.md, Names), so a run of
# anything else is exactly one name; the message is the verbatim rest.
_NAME = r"([^\s\]]+)"
_PUBLIC = re.compile(rf"\[public group {_NAME} from {_NAME}\] (.*)\Z", re.S)
_PRIVATE = re.compile(rf"\[private from {_NAME}\] (.*)\Z", re.S)
_HISTORY = re.compile(rf"\[history group {_NAME} at (\S+) from {_NAME}\] (.*)\Z", re.S)
_MEMBERSHIP = re.compile(rf"{_NAME} (joined|left) the group {_NAME}\Z")


def parse_line(raw: str) -> Line:
    """Classify one server line (without its LF) into a `Line`."""
    line = raw[:-1] if raw.endswith("\r") else raw
    for prefix, parser in _PREFIXES:
        if line.startswith(prefix) or line == prefix.rstrip():
            return parser(line, line[len(prefix) :])
    return Line(Kind.UNKNOWN, line)


def _prompt(line: str, _rest: str) -> Line:
    return Line(Kind.PROMPT, line) if line == "enter a username:" else Line(Kind.UNKNOWN, line)


def _connected(line: str, rest: str) -> Line:
    user = rest[len("welcome ") :] if rest.startswith("welcome ") else rest
    return Line(Kind.CONNECTED, line, text=rest, user=user)


def _joined_general(line: str, rest: str) -> Line:
    return Line(Kind.JOINED_GENERAL, line, group=rest)


def _ok(line: str, rest: str) -> Line:
    return Line(Kind.OK, line, text=rest)


def _info(line: str, rest: str) -> Line:
    return Line(Kind.INFO, line, text=rest, group=rest.split(" ", 1)[0])


def _error(line: str, rest: str) -> Line:
    return Line(Kind.ERROR, line, text=rest)


def _listing(kind: Kind):
    def parse(line: str, rest: str) -> Line:
        return Line(kind, line, names=tuple(rest.split()))

    return parse


def _delivery(kind: Kind, pattern: re.Pattern[str]):
    def parse(line: str, _rest: str) -> Line:
        m = pattern.match(line)
        if not m:
            return Line(Kind.UNKNOWN, line)
        if kind is Kind.PRIVATE:
            return Line(kind, line, user=m[1], text=m[2])
        if kind is Kind.HISTORY:
            return Line(kind, line, group=m[1], time=m[2], user=m[3], text=m[4])
        return Line(kind, line, group=m[1], user=m[2], text=m[3])

    return parse


def _notice(line: str, rest: str) -> Line:
    if rest == "disconnected by an administrator":
        return Line(Kind.NOTICE, line, text=rest, notice=Notice.KICKED)
    if rest == "server shutting down":
        return Line(Kind.NOTICE, line, text=rest, notice=Notice.SHUTDOWN)
    if rest.startswith("announcement: "):
        text = rest[len("announcement: ") :]
        return Line(Kind.NOTICE, line, text=text, notice=Notice.ANNOUNCEMENT)
    m = _MEMBERSHIP.match(rest)
    if m:
        sub = Notice.JOINED if m[2] == "joined" else Notice.LEFT
        return Line(Kind.NOTICE, line, text=rest, user=m[1], group=m[3], notice=sub)
    return Line(Kind.NOTICE, line, text=rest, notice=Notice.OTHER)


# Order matters only where one prefix could start another; none here do.
_PREFIXES = (
    ("enter a username:", _prompt),
    ("connected! ", _connected),
    ("you joined the group ", _joined_general),
    ("ok: ", _ok),
    ("error: ", _error),
    ("groups: ", _listing(Kind.GROUPS)),
    ("users: ", _listing(Kind.USERS)),
    ("info: ", _info),
    ("[public group ", _delivery(Kind.PUBLIC, _PUBLIC)),
    ("[private from ", _delivery(Kind.PRIVATE, _PRIVATE)),
    ("[history group ", _delivery(Kind.HISTORY, _HISTORY)),
    ("* ", _notice),
)


# --- load-test message payloads -------------------------------------------
# Message text: "lt1 <seq> <unix time> <padding>". The sequence number lets a
# receiver detect drops and reordering per (sender, target); the timestamp is
# the sender's wall clock, so receiver-side now() minus it is the end-to-end
# latency (valid only when both ends share a clock: see docs/loadtesting.md).
PAYLOAD_TAG = "lt1"


@dataclass(frozen=True)
class Payload:
    seq: int
    sent_at: float


def encode_payload(seq: int, sent_at: float | None = None, size: int = 0) -> str:
    """Message text carrying `seq` and the send time, padded to `size` characters."""
    ts = time.time() if sent_at is None else sent_at
    text = f"{PAYLOAD_TAG} {seq} {ts:.6f}"
    if len(text) + 1 < size:
        text += " " + "x" * (size - len(text) - 1)
    return text


def decode_payload(text: str) -> Payload | None:
    """The payload in a message text, or None for messages not sent by a load-test user."""
    parts = text.split(" ", 3)
    if len(parts) < 3 or parts[0] != PAYLOAD_TAG:
        return None
    try:
        return Payload(int(parts[1]), float(parts[2]))
    except ValueError:
        return None


# --- load-test user names ----------------------------------------------------
# lt<role>-<process tag>-<n>, e.g. ltc-3fa9c1-17: unique across processes and
# runs, and recognisable, so failure reasons can hide them (Locust groups
# failures by their text; one row per user name would bury the real reasons).
_OUR_NAME = re.compile(r"\blt[a-z]-[0-9a-f]{6}-\d+\b")


def make_name(role: str, tag: str, n: int) -> str:
    return f"lt{role}-{tag}-{n}"


def generic(text: str) -> str:
    """`text` with load-test user names replaced by `<user>`."""
    return _OUR_NAME.sub("<user>", text)


def parse_host(host: str | None) -> tuple[str, int]:
    """(host, port) from Locust's --host: tcp://HOST:PORT, HOST:PORT or HOST; IPv6 in []."""
    if not host:
        raise ValueError("no host: pass --host tcp://HOST:PORT")
    rest = host.strip()
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme.lower() != "tcp":
            raise ValueError(f"unsupported scheme {scheme!r} in {host!r}: use tcp://HOST:PORT")
    rest = rest.rstrip("/")
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", rest)
    if not m:
        raise ValueError(f"cannot parse host {host!r}: use tcp://HOST:PORT")
    name = m[1] or m[3]
    port = int(m[2] or m[4] or DEFAULT_PORT)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {host!r}")
    return name, port

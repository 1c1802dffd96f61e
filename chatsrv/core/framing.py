"""Bytes to lines, with no I/O: the receive side of PROTOCOL.md's framing.

A transport keeps two values per connection, the partial line carried over
from the last read (`rest`) and whether it is inside a too-long line whose
error was already reported (`discarding`), and passes them through `split`.
Two plain values rather than an object: an idle parked session costs about
1.8 kB and a reader object per session would add to every one of them.

- A line ends with LF; `decode` drops one CR before it.
- A line of `max_line` bytes or more (LF included) is reported once as too
  long and discarded up to and including its LF, however it is split into
  reads; nothing of it beyond `max_line` bytes is ever buffered.
- Legacy clients (PROTOCOL.md v2): bytes followed by LEGACY_SILENCE_S of
  silence are a line on a connection whose username came that way; the
  transport owns the timer and calls `flush_partial` when it fires.
"""

from __future__ import annotations

from . import protocol as P

LEGACY_SILENCE_S = 0.2


class FramingError(Exception):
    """A line the protocol refuses; `reply` is the encoded `error:` line to send."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply.decode().rstrip("\n"))
        self.reply = reply


def split(rest: bytes, discarding: bool, data: bytes,
          max_line: int) -> tuple[list[bytes], bytes, bool]:
    """The complete lines of `rest + data` (without their LF), the new `rest`
    and the new `discarding`. A too-long line appears once in the lines, as
    its first `max_line` bytes or more, for `decode` to report."""
    lines = (rest + data if rest else data).split(b"\n")
    rest = lines.pop()
    if discarding:
        if not lines:  # still inside the too-long line: keep none of it
            return lines, b"", True
        del lines[0]  # the end of the too-long line already reported
        discarding = False
    if len(rest) >= max_line:
        if not discarding:
            lines.append(rest)  # reported as too long, like a complete one
            discarding = True
        rest = b""
    return lines, rest, discarding


def flush_partial(rest: bytes, discarding: bool) -> list[bytes]:
    """Silence after a partial line on a legacy connection: it is a line (none
    inside a too-long line, which keeps waiting for its LF)."""
    return [rest] if rest and not discarding else []


def decode(line: bytes, max_line: int) -> str:
    """A framed line as text; raises FramingError (too long, invalid UTF-8)."""
    if len(line) >= max_line:
        raise FramingError(P.line_too_long(max_line))
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        return line.decode()
    except UnicodeDecodeError:
        raise FramingError(P.INVALID_UTF8) from None

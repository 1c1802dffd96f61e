"""Logging set-up: one line per event, as text or JSON (`--log-format`).

Every record goes through `LogGuard` on the one handler, whoever logged it
(the loop, the store's thread, gevent's WSGI server):
- its message is escaped so that nothing a client sent (a path, a name, a
  line) can start a new log line or reorder one: C0/C1 controls (LF, CR, ESC,
  NEL...), U+2028/U+2029 and the bidi controls become `\\n`, `\\x1b`, `\\u2028`;
- repeated warnings and errors (and records logged with `extra={"ratelimit":
  True}`, e.g. the admin API's 401s) are rate-limited per logger and message
  template: at most `REPEAT_BURST` in `REPEAT_WINDOW_S`; the next one logged
  after that says how many were left out.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time

REPEAT_WINDOW_S = 10.0
REPEAT_BURST = 5
_MAX_KEYS = 1024

_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escape_char(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def escape(text: str) -> str:
    """`text` with every character that could break or reorder a log line escaped."""
    return _UNSAFE.sub(_escape_char, text) if _UNSAFE.search(text) else text


class LogGuard(logging.Filter):
    """Escapes each record's message and rate-limits repeated ones (module doc)."""

    def __init__(self, window: float = REPEAT_WINDOW_S, burst: int = REPEAT_BURST) -> None:
        super().__init__()
        self.window = window
        self.burst = burst
        self._lock = threading.Lock()  # the store's thread logs too
        self._seen: dict[tuple[str, str, int], list[float]] = {}  # [start, logged, left out]

    def filter(self, record: logging.LogRecord) -> bool:
        limited = getattr(record, "ratelimit", record.levelno >= logging.WARNING)
        note = ""
        if limited:
            key = (record.name, str(record.msg), record.levelno)
            with self._lock:
                state = self._seen.get(key)
                if state is None or record.created - state[0] >= self.window:
                    if state is not None and state[2]:
                        note = (f" ({int(state[2])} more like this not logged in the "
                                f"{self.window:g} s after {_stamp(state[0])})")
                    if state is None and len(self._seen) >= _MAX_KEYS:
                        self._forget(record.created)
                    self._seen[key] = [record.created, 1, 0]
                elif state[1] < self.burst:
                    state[1] += 1
                else:
                    state[2] += 1
                    return False
        record.msg = escape(record.getMessage()) + note
        record.args = None
        return True

    def _forget(self, now: float) -> None:
        """Drop templates not seen for a window (a count left out there is lost)."""
        for key in [k for k, s in self._seen.items() if now - s[0] >= self.window]:
            del self._seen[key]
        if len(self._seen) >= _MAX_KEYS:
            self._seen.clear()


def _stamp(at: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at)) + "Z"


class TextFormatter(logging.Formatter):
    """The message on one line; a traceback's lines indented under it."""

    def formatException(self, ei) -> str:  # noqa: N802 (logging's name)
        return "\n".join("    " + escape(line) for line in super().formatException(ei).splitlines())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # json escapes C0 itself; these it leaves raw (valid JSON either way).
        out = json.dumps(entry, ensure_ascii=False)
        return _JSON_UNSAFE.sub(_json_escape, out) if _JSON_UNSAFE.search(out) else out


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(LogGuard())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

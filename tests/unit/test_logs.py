"""logs.LogGuard: one line per record whatever a client sent; repeats rate-limited."""

from __future__ import annotations

import io
import json
import logging

import pytest

from chatsrv.logs import JsonFormatter, LogGuard, TextFormatter, escape

EVIL = "/api/v1/x\n2026-01-01 00:00:00,000 INFO chatsrv.server: forged\r\u2028y\u2029\u202ez\x1b[2J\x85"


def make_logger(fmt: logging.Formatter, guard: LogGuard) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(fmt)
    handler.addFilter(guard)
    logger = logging.getLogger(f"test.logs.{id(out)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def test_escape_leaves_nothing_that_breaks_a_line():
    text = escape(EVIL)
    assert len(text.splitlines()) == 1
    assert "\\n2026-01-01" in text and "\\u2028" in text and "\\u202e" in text and "\\x1b" in text
    assert escape("plain ü \u200c\t") == "plain ü \u200c\t"


@pytest.mark.parametrize("fmt", [TextFormatter("%(levelname)s %(message)s"), JsonFormatter()])
def test_a_client_string_cannot_start_a_log_line(fmt):
    logger, out = make_logger(fmt, LogGuard())
    logger.info("401 for %s", EVIL)
    try:
        raise ValueError(EVIL)
    except ValueError:
        logger.exception("failed %s", EVIL)
    text = out.getvalue()
    lines = text.splitlines()  # splits on U+2028, U+2029, NEL too
    if isinstance(fmt, JsonFormatter):
        assert len(lines) == 2
        assert all(json.loads(line)["level"] for line in lines)
    else:
        assert lines[0].startswith("INFO 401 for ")
        assert lines[1].startswith("ERROR failed ")
        assert all(line.startswith("    ") for line in lines[2:])  # the traceback, indented


def test_repeated_errors_are_rate_limited_with_a_count():
    guard = LogGuard(window=10.0, burst=3)
    logger, out = make_logger(TextFormatter("%(message)s"), guard)
    records = []
    for i in range(20):
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1,
                                   "write failed: %s", (f"disk full {i}",), None)
        record.created = 1000.0 + i * 0.1
        records.append(record)
    late = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "write failed: %s",
                             ("disk full again",), None)
    late.created = 1011.0
    other = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "another: %s", ("x",), None)
    other.created = 1000.5
    info = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "login %s", ("u",), None)
    info.created = 1000.5
    for record in [*records, other, *[info] * 10, late]:
        logger.handle(record)
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["write failed: disk full 0", "write failed: disk full 1",
                         "write failed: disk full 2"]
    assert lines.count("another: x") == 1
    assert lines.count("login u") == 10  # informational events are not limited
    assert lines[-1].startswith("write failed: disk full again (17 more like this not logged")
    assert len(lines) == 3 + 1 + 10 + 1


def test_records_marked_ratelimit_are_limited_at_info():
    guard = LogGuard(window=10.0, burst=2)
    logger, out = make_logger(TextFormatter("%(message)s"), guard)
    for i in range(10):
        logger.info("401 for %s", f"/p{i}", extra={"ratelimit": True})
    assert out.getvalue().splitlines() == ["401 for /p0", "401 for /p1"]

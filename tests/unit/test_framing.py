"""chatsrv.core.framing without sockets: lines, CR, the line limit, invalid
UTF-8, and the legacy clients' partial lines."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatsrv.core import framing
from chatsrv.core import protocol as P
from chatsrv.core.framing import FramingError

MAX = 16


def outcomes(chunks: list[bytes], max_line: int = MAX) -> tuple[list[object], bytes]:
    """What a transport would do with these reads: each line's text or error reply."""
    rest, discarding, out = b"", False, []
    for chunk in chunks:
        lines, rest, discarding = framing.split(rest, discarding, chunk, max_line)
        assert len(rest) < max_line  # never more than a line's worth buffered
        for line in lines:
            try:
                out.append(framing.decode(line, max_line))
            except FramingError as err:
                out.append(err.reply)
    return out, rest


def test_lines_cr_and_partial():
    assert outcomes([b"ping\r\nhel", b"p\n", b"us"]) == (["ping", "help"], b"us")


def test_too_long_reported_once_however_split():
    long_line = b"x" * 40 + b"\n"
    for size in (1, 3, 7, 41):
        chunks = [long_line[i:i + size] for i in range(0, len(long_line), size)]
        out, rest = outcomes([*chunks, b"ok\n"])
        assert out == [P.line_too_long(MAX), "ok"], size
        assert rest == b""


def test_exactly_the_limit():
    assert outcomes([b"a" * (MAX - 1) + b"\n"])[0] == ["a" * (MAX - 1)]
    assert outcomes([b"a" * MAX + b"\n"])[0] == [P.line_too_long(MAX)]


def test_invalid_utf8():
    assert outcomes([b"\xff\xfe\n", b"ok\n"])[0] == [P.INVALID_UTF8, "ok"]


def test_flush_partial():
    assert framing.flush_partial(b"alice", False) == [b"alice"]
    assert framing.flush_partial(b"", False) == []
    assert framing.flush_partial(b"", True) == []  # inside a too-long line: wait for LF


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.lists(st.integers(0, 120), max_size=8))
def test_split_points_do_not_matter(data: bytes, cuts: list[int]):
    """Any byte stream gives the same lines however the reads split it."""
    points = sorted({min(c, len(data)) for c in cuts})
    chunks, last = [], 0
    for point in points:
        chunks.append(data[last:point])
        last = point
    chunks.append(data[last:])
    assert outcomes(chunks) == outcomes([data])


@pytest.mark.parametrize("line", [b"", b" \t", b"public General hi"])
def test_decode_plain(line):
    assert framing.decode(line, MAX * 4) == line.decode()

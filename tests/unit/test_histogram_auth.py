"""The plain-number latency histogram and the admin token helpers."""

from __future__ import annotations

import stat

import pytest

from chatsrv.auth import bearer_ok, is_loopback, load_or_create_token
from chatsrv.core.histogram import Histogram


def test_histogram_le_semantics_and_cumulative_counts():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 3.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert h.count == 5 and h.sum == pytest.approx(4.65)


@pytest.mark.parametrize("host,loop", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False),
    ("chat.example.net", False), ("", False),
])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_bearer_ok():
    assert bearer_ok("Bearer abc", "abc") and bearer_ok("bearer abc", "abc")
    for header in (None, "", "Bearer", "Bearer ab", "Bearer abcd", "Basic abc", "abc"):
        assert not bearer_ok(header, "abc"), header


def test_token_file_made_once_0600(tmp_path):
    token = load_or_create_token(tmp_path / "d")
    path = tmp_path / "d" / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(tmp_path / "d") == token
    path.write_text("  \n")
    with pytest.raises(OSError, match="empty"):
        load_or_create_token(tmp_path / "d")

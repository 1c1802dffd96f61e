"""Issue 17: the log tells the truth, one line per event, whatever a client sends."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import time
from urllib.parse import urlsplit

import pytest

FORGED = "2026-01-01 00:00:00,000 WARNING chatsrv.server: forged"
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def get(url: str, path: str) -> int:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_newline_in_a_path_does_not_forge_a_log_line(http_server):
    path = "/api/v1/users%0a" + FORGED.replace(" ", "%20") + "%e2%80%a8x%0d"
    assert get(http_server.http_url, path) == 401
    log = http_server.log()
    assert "forged" in log  # it was logged, escaped
    for line in log.splitlines():  # splitlines splits on U+2028 too
        assert STAMP.match(line) or line.startswith("    "), f"not a log line: {line!r}"
    assert not any(line.startswith(FORGED) for line in log.splitlines())


def test_unauthenticated_requests_are_logged_rate_limited(http_server):
    for i in range(40):
        assert get(http_server.http_url, f"/api/v1/users?n={i}") == 401
    logged = [line for line in http_server.log().splitlines() if "admin API: 401" in line]
    assert 1 <= len(logged) < 40


def test_json_logs_stay_json_with_hostile_paths(make_http_server):
    server = make_http_server(rate_limit=0, log_format="json")
    path = "/api/v1/x%0a{%22level%22:%22error%22}%e2%80%a9y"
    assert get(server.http_url, path) == 401
    lines = server.log().splitlines()
    assert any("admin API: 401" in json.loads(line)["message"] for line in lines)


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(where)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_disk_full_is_logged_once_as_json_with_the_real_error(small_disk, make_server, login):
    server = make_server(rate_limit=0, data_dir=small_disk / "data", log_format="json",
                         flush_ms=20)
    alice = login(server, "alice")
    text = "x" * 3000
    deadline = time.monotonic() + 60
    while "database or disk is full" not in server.log():
        assert time.monotonic() < deadline, server.log()[-2000:]
        alice.send("\n".join(f"public General {i} {text}" for i in range(50)))
        alice.sync()
    for _ in range(20):  # more flushes that fail
        alice.send("\n".join(f"public General more {text}" for _ in range(50)))
        alice.sync()
    assert alice.request("ping") == "ok: pong"  # chat goes on
    lines = server.log().splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON: no raw traceback
    store = [r for r in records if r["logger"] == "chatsrv.store"]
    assert any(r["message"].endswith("database or disk is full") for r in store)
    assert not any("cannot rollback" in line for line in lines)
    assert len(store) <= 5, store

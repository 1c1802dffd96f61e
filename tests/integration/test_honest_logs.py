"""Issue 17: the log tells the truth, one line per event, whatever a client sends."""

from __future__ import annotations

import http.client
import json
import re
from urllib.parse import urlsplit

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

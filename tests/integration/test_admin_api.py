"""The HTTP endpoint of a real server with real clients: health, auth, every admin call."""

from __future__ import annotations

import calendar
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Api, free_port, stall_shutdown

API = "/api/v1"
ENDPOINTS = [
    ("GET", "/users"), ("POST", "/users/alice/kick"), ("GET", "/groups"),
    ("POST", "/groups"), ("GET", "/groups/General"), ("POST", "/announce"), ("GET", "/stats"),
]


def test_health_and_ready_are_open(http_server):
    api = http_server.api
    assert api.get("/healthz", token=None) == (200, {"status": "ok"})
    assert api.get("/readyz", token=None) == (200, {"status": "ready"})
    status, text = api.get("/metrics", token=None)
    assert status == 200 and "chatsrv_connections_active 0.0" in text


def test_every_api_call_needs_the_token(http_server, login):
    alice = login(http_server, "alice")
    api = http_server.api
    right = api.token
    for method, path in ENDPOINTS:
        for header in (None, "Bearer wrong", f"Basic {right}", f"Bearer {right}x", "Bearer",
                       f"Bearer {right[:-1]}"):
            headers = {"Authorization": header} if header else None
            status, body = api.call(method, API + path, {"name": "X", "text": "hi"},
                                    token=None, headers=headers)
            assert status == 401 and "error" in body, (method, path, header)
    # ... and nothing changed: alice is still here, no group X, no announcement.
    alice.send("groups")
    assert alice.read_line() == "groups: General"
    assert api.get(API + "/users")[1]["users"][0]["name"] == "alice"


def test_unknown_paths_and_methods(http_server):
    api = http_server.api
    assert api.get("/nope", token=None)[0] == 404
    assert api.get(API + "/nope", token=None)[0] == 401  # no routing before auth
    status, body = api.get(API + "/nope")
    assert status == 404 and body["error"] == "no such endpoint: /api/v1/nope"
    status, body = api.call("DELETE", API + "/groups")
    assert status == 405 and "error" in body
    assert api.call("POST", "/metrics", token=None)[0] == 405


def test_users_lists_connection_details(http_server, login):
    alice = login(http_server, "Alice")
    bob = login(http_server, "bob")
    alice.expect("* bob joined the group General")
    assert alice.request("create dev") == "ok: created group dev"
    assert alice.request("join dev") == "ok: joined group dev"
    bob.send("public General hello")
    alice.expect("[public group General from bob] hello")
    users = http_server.api.ok("GET", API + "/users")["users"]
    assert [u["name"] for u in users] == ["Alice", "bob"]
    a = users[0]
    assert a["groups"] == ["dev", "General"]
    assert a["peer"] == "{}:{}".format(*alice.sock.getsockname())
    assert a["bytes_in"] == len(b"Alice\ncreate dev\njoin dev\n")
    assert a["bytes_out"] > 0 and a["sendq_bytes"] == 0
    now = time.time()
    for key in ("connected_at", "logged_in_at"):
        at = calendar.timegm(time.strptime(a[key], "%Y-%m-%dT%H:%M:%SZ"))
        assert now - 60 < at <= now + 1


def test_groups_create_and_show(http_server, login):
    api = http_server.api
    alice = login(http_server, "alice")
    assert api.ok("POST", API + "/groups", {"name": "Ops"})["name"] == "Ops"
    status, body = api.post(API + "/groups", {"name": "OPS"})
    assert status == 409 and body["error"] == "group already exists: Ops"
    status, body = api.post(API + "/groups", {"name": "no spaces"})
    assert status == 400 and body["error"].startswith("invalid group name")
    assert api.post(API + "/groups", {})[0] == 400
    assert api.post(API + "/groups", {"name": 5})[0] == 400
    assert alice.request("join ops") == "ok: joined group Ops"  # the clients see it
    groups = api.ok("GET", API + "/groups")["groups"]
    assert [(g["name"], g["members"]) for g in groups] == [("General", 1), ("Ops", 1)]
    assert groups[1]["created_by"] is None and groups[1]["created_at"].endswith("Z")
    assert api.ok("GET", API + "/groups/oPs")["members"] == ["alice"]
    status, body = api.get(API + "/groups/nope")
    assert status == 404 and body["error"] == "no such group: nope"


def test_names_in_paths_are_utf8_nfc_and_case_insensitive(http_server, login):
    api = http_server.api
    name = "Zoë"  # NFC
    login(http_server, name)
    assert api.ok("POST", API + "/groups", {"name": "کافه"})["name"] == "کافه"
    assert api.ok("GET", API + "/groups/%DA%A9%D8%A7%D9%81%D9%87")["name"] == "کافه"
    decomposed = "zoe\u0308".upper().replace("Ë", "E\u0308")  # ZOË, NFD
    status, body = api.post(API + "/users/" + _quote(decomposed) + "/kick")
    assert (status, body) == (200, {"kicked": name})
    assert api.get(API + "/groups/%ff")[0] == 400


def test_bad_json_and_bad_fields_are_400(http_server):
    api = http_server.api
    for raw in (b"{", b"\xff", b"[1]", b'"text"'):
        status, body = api.call("POST", API + "/announce", raw=raw)
        assert status == 400 and "error" in body, raw
    big = b'{"text": "' + b"x" * 70000 + b'"}'
    assert api.call("POST", API + "/announce", raw=big)[0] == 413


def test_kick_closes_the_socket_and_frees_the_name(http_server, login, connect):
    api = http_server.api
    alice = login(http_server, "alice")
    bob = login(http_server, "bob")
    alice.read_line()  # bob joined
    status, body = api.post(API + "/users/ALICE/kick")
    assert (status, body) == (200, {"kicked": "alice"})
    # The name is free as soon as the call returns.
    again = connect(http_server)
    again.expect("enter a username:")
    again.send("alice")
    again.expect("connected! welcome alice", "you joined the group General")
    alice.expect("* disconnected by an administrator")
    assert alice.closed()
    bob.expect("* alice left the group General", "* alice joined the group General")
    status, body = api.post(API + "/users/nobody/kick")
    assert status == 404 and body["error"] == "no such user: nobody"
    assert "user=alice reason=kicked" in http_server.log()
    assert "admin: kicked user=alice" in http_server.log()


def test_kick_of_a_session_that_never_reads(http_server, login):
    """A kick ends a stalled session too, without waiting for its socket."""
    api = http_server.api
    stalled = login(http_server, "stalled")
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    talker = login(http_server, "talker")
    talker.send("".join(f"public General {'x' * 500}\n" for _ in range(200)))
    talker.sync()
    assert api.ok("POST", API + "/users/stalled/kick") == {"kicked": "stalled"}
    assert "stalled" not in [u["name"] for u in api.ok("GET", API + "/users")["users"]]


def test_announce_to_everyone_and_to_a_group(http_server, login):
    api = http_server.api
    alice = login(http_server, "alice")
    bob = login(http_server, "bob")
    alice.read_line()
    assert alice.request("create dev") == "ok: created group dev"
    assert alice.request("join dev") == "ok: joined group dev"
    assert api.ok("POST", API + "/announce", {"text": "restart at 5 [UTC]"}) == {
        "delivered": 2, "group": None}
    alice.expect("* announcement: restart at 5 [UTC]")
    bob.expect("* announcement: restart at 5 [UTC]")
    assert api.ok("POST", API + "/announce", {"text": "dev only", "group": "DEV"}) == {
        "delivered": 1, "group": "DEV"}
    alice.expect("* announcement: dev only")
    bob.sync()  # bob got nothing before his pong
    status, body = api.post(API + "/announce", {"text": "x", "group": "nope"})
    assert status == 404 and body["error"] == "no such group: nope"
    for bad in ("", "  \t", "bell\x07", "line\nbreak", "c1\x85", "x" * 4096):
        status, body = api.post(API + "/announce", {"text": bad})
        assert status == 400 and "error" in body, bad
    assert api.post(API + "/announce", {"text": 5})[0] == 400
    assert api.post(API + "/announce", {"group": "dev"})[0] == 400
    bob.sync()


def test_stats(http_server, login):
    api = http_server.api
    alice = login(http_server, "alice")
    bob = login(http_server, "bob")
    alice.read_line()
    bob.send("public General one")
    bob.send("private alice two")
    alice.expect("[public group General from bob] one", "[private from bob] two")
    bob.send("exit")
    bob.read_until(lambda line: line == "ok: bye")
    alice.expect("* bob left the group General")
    stats = api.ok("GET", API + "/stats")
    assert stats["users"] == 1 and stats["groups"] == 1
    assert stats["messages"] == {"public": 1, "private": 1}
    assert stats["deliveries"] == {"public": 1, "private": 1}
    assert stats["connections"] == {"active": 1, "total": 2, "rejected": 0}
    assert stats["disconnects"]["exit"] == 1 and stats["shutting_down"] is False
    assert 0 <= stats["uptime_seconds"] < 600


def test_readyz_is_503_while_shutting_down(make_http_server, login):
    server = make_http_server(rate_limit=0, shutdown_grace=3, sendq=16 << 20)
    api = server.api
    stall_shutdown(server, login)
    deadline = time.monotonic() + 5
    status = 200
    while status == 200 and time.monotonic() < deadline:
        status, body = api.get("/readyz", token=None)
    assert (status, body) == (503, {"status": "shutting down"})
    assert api.get("/healthz", token=None)[0] == 200
    assert server.proc.wait(15) == 0


# ---------------------------------------------------------------- the token


def test_token_is_generated_once_with_mode_0600(make_http_server, tmp_path):
    data = tmp_path / "data"
    first = make_http_server(data_dir=data)
    token = (data / "admin.token").read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE((data / "admin.token").stat().st_mode) == 0o600
    assert first.api.get(API + "/stats")[0] == 200
    first.stop()
    second = make_http_server(data_dir=data)
    assert (data / "admin.token").read_text().strip() == token  # reused
    assert second.api.get(API + "/stats")[0] == 200
    assert token not in second.log()


def test_configured_token_wins_and_writes_no_file(make_http_server, tmp_path):
    server = make_http_server(admin_token="s3cret-token-for-tests", data_dir=tmp_path / "d")
    assert not (tmp_path / "d" / "admin.token").exists()
    assert server.api.get(API + "/stats")[0] == 200
    assert server.api.get(API + "/stats", token="s3cret-token-for-test")[0] == 401


def _serve(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATSRV_")}
    return subprocess.run(
        [sys.executable, "-m", "chatsrv", "serve", "--port", "0", "--web-port", "0",
         "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True, text=True, timeout=30, env={**clean, **(env or {})},
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "chat.example.net"])
def test_exposed_http_port_without_a_token_is_refused(tmp_path, host):
    result = _serve(tmp_path, "--http-host", host, "--http-port", "1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --http-host ")
    assert "--admin-token" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("token", ["x", "fifteen-chars15"])
def test_exposed_http_port_with_a_short_token_is_refused(tmp_path, token):
    result = _serve(tmp_path, "--http-host", "0.0.0.0", "--http-port", "1",
                    env={"CHATSRV_ADMIN_TOKEN": token})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: --admin-token must be at least 16 characters when --http-host "
                     "0.0.0.0 is not a loopback address (e.g. `openssl rand -hex 32`)"]


def test_a_short_token_is_fine_on_loopback(make_http_server):
    server = make_http_server(admin_token="x")
    assert server.api.get(API + "/stats")[0] == 200


def test_exposed_http_port_with_a_token_starts(make_http_server, tmp_path):
    server = make_http_server(http_host="0.0.0.0", admin_token="a-token-from-the-operator")
    assert server.http_url.startswith("http://0.0.0.0:")
    assert server.api.get(API + "/stats")[0] == 200
    assert not (tmp_path / "data" / "admin.token").exists()


def test_token_from_the_environment(tmp_path):
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATSRV_")}
    env = {**clean, "CHATSRV_ADMIN_TOKEN": "env-token", "CHATSRV_HTTP_PORT": str(port)}
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "chatsrv", "serve", "--port", "0", "--web-port", "0",
                                 "--data-dir", str(tmp_path / "data")],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 20
        while "listening on" not in log_path.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.02)
        api = Api(f"http://127.0.0.1:{port}", "env-token")
        assert api.get(API + "/stats")[0] == 200
        assert api.get(API + "/stats", token="other")[0] == 401
    finally:
        proc.kill()
        proc.wait()


def test_http_port_in_use_is_one_line_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(tmp_path, "--http-port", str(port))
    assert result.returncode == 1
    assert "error: cannot start:" in result.stderr and "Traceback" not in result.stderr


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def test_a_group_created_by_the_api_is_durable_and_races_a_user(make_http_server, login):
    # The API's create goes through the store like a user's: committed before
    # 201, visible to users at once, and there after a restart.
    server = make_http_server(rate_limit=0)
    alice = login(server, "alice")
    assert server.api.call("POST", API + "/groups", {"name": "Ops"})[0] == 201
    assert alice.request("join ops") == "ok: joined group Ops"
    # A user's pending create and the API's create of the same name: one wins.
    alice.send("create Race")
    status, _ = server.api.call("POST", API + "/groups", {"name": "race"})
    assert alice.read_line() == "ok: created group Race"
    assert status == 409
    assert server.stop(signal.SIGTERM) == 0
    again = make_http_server(rate_limit=0)
    status, groups = again.api.call("GET", API + "/groups")
    assert sorted(g["name"] for g in groups["groups"]) == ["General", "Ops", "Race"]

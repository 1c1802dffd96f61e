"""Every `chatsrv-admin` command against a real server with real clients.

Most run in-process through Typer's CliRunner (fast); the console script itself
runs as a subprocess for exit codes, the token file default and Ctrl-C in `top`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from chatsrv_admin.cli import app
from conftest import stall_shutdown
from typer.testing import CliRunner

ADMIN = [str(Path(sys.executable).parent / "chatsrv-admin")]


@pytest.fixture
def admin(http_server):
    runner = CliRunner()
    clean = {k: None for k in os.environ if k.startswith("CHATSRV_")}

    def run(*args: str, token: str | None = None):
        env = {**clean, "CHATSRV_ADMIN_TOKEN": token or http_server.api.token}
        return runner.invoke(app, ["--url", http_server.http_url, *args], env=env)

    return run


def script(*args: str, cwd=None, env=None, timeout=30) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATSRV_")}
    return subprocess.run([*ADMIN, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**clean, "COLUMNS": "200", **(env or {})})


def test_users_table_and_json(admin, http_server, login):
    login(http_server, "alice")
    login(http_server, "Zoë")
    result = admin("users")
    assert result.exit_code == 0, result.output
    assert "2 users" in result.output and "alice" in result.output and "Zoë" in result.output
    result = admin("--json", "users")
    users = json.loads(result.output)["users"]
    assert [u["name"] for u in users] == ["alice", "Zoë"]
    assert json.loads(admin("users", "--json").output) == {"users": users}


def test_groups_group_and_create(admin, http_server, login):
    alice = login(http_server, "alice")
    result = admin("create", "Ops")
    assert result.exit_code == 0 and "created group Ops" in result.output
    result = admin("create", "ops")
    assert result.exit_code == 1
    assert result.output.strip() == "error: group already exists: Ops (HTTP 409)"
    result = admin("create", "bad name!")
    assert result.exit_code == 1 and "invalid group name" in result.output
    assert alice.request("join ops") == "ok: joined group Ops"
    result = admin("groups")
    assert result.exit_code == 0 and "General" in result.output and "Ops" in result.output
    result = admin("--json", "groups")
    assert [(g["name"], g["members"]) for g in json.loads(result.output)["groups"]] == [
        ("General", 1), ("Ops", 1)]
    result = admin("group", "OPS")
    assert result.exit_code == 0 and "group Ops: 1 member" in result.output
    assert "  alice" in result.output
    result = admin("group", "nope")
    assert result.exit_code == 1
    assert result.output.strip() == "error: no such group: nope (HTTP 404)"


def test_kick(admin, http_server, login, connect):
    alice = login(http_server, "alice")
    result = admin("kick", "Alice")
    assert result.exit_code == 0 and "kicked alice" in result.output
    alice.expect("* disconnected by an administrator")
    assert alice.closed()
    again = connect(http_server)
    again.expect("enter a username:")
    again.send("alice")
    again.expect("connected! welcome alice")
    result = admin("kick", "nobody")
    assert result.exit_code == 1 and "no such user: nobody" in result.output


def test_announce(admin, http_server, login):
    alice = login(http_server, "alice")
    bob = login(http_server, "bob")
    alice.read_line()
    assert alice.request("create dev") == "ok: created group dev"
    assert alice.request("join dev") == "ok: joined group dev"
    result = admin("announce", "maintenance at 5")
    assert result.exit_code == 0 and "everyone: 2 receivers" in result.output
    alice.expect("* announcement: maintenance at 5")
    bob.expect("* announcement: maintenance at 5")
    result = admin("announce", "--group", "dev", "dev only")
    assert result.exit_code == 0 and "group dev: 1 receiver" in result.output
    alice.expect("* announcement: dev only")
    bob.sync()
    result = admin("announce", "x", "--group", "nope")
    assert result.exit_code == 1 and "no such group: nope" in result.output
    result = admin("announce", "bell\x07")
    assert result.exit_code == 1 and "control characters" in result.output
    result = admin("--json", "announce", "json")
    assert json.loads(result.output) == {"delivered": 2, "group": None}


def test_stats_and_health(admin, http_server, login):
    alice = login(http_server, "alice")
    alice.send("public General nobody hears")
    alice.sync()
    result = admin("stats")
    assert result.exit_code == 0 and "messages public" in result.output
    stats = json.loads(admin("--json", "stats").output)
    assert stats["users"] == 1 and stats["messages"]["public"] == 1
    result = admin("health")
    assert result.exit_code == 0 and "alive; ready" in result.output
    assert json.loads(admin("--json", "health").output) == {
        "alive": True, "ready": True, "status": "ready"}


def test_top_counts_rates(admin, http_server, login):
    alice = login(http_server, "alice")
    login(http_server, "bob")
    alice.read_line()
    result = admin("--json", "top", "--iterations", "2", "--interval", "0.2")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 2 and rows[0]["users"] == 2 and rows[0]["groups"] == 1
    alice.send("".join(f"public General {i}\n" for i in range(200)))  # before the 1st sample
    alice.sync()
    result = admin("top", "--once", "--interval", "0.2")
    assert result.exit_code == 0 and "msgs/s" in result.output
    assert len(result.output.strip().splitlines()) == 2  # header and one row


def test_wrong_token_is_refused(admin, http_server):
    result = admin("users", token="wrong")
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: the server refused the admin token")


# ---------------------------------------------------------------- the console script


def test_script_reads_the_token_file_of_the_data_dir(http_server, tmp_path, login):
    login(http_server, "alice")
    result = script("--url", http_server.http_url, "--data-dir", str(tmp_path / "data"),
                    "users")
    assert result.returncode == 0, result.stderr
    assert "alice" in result.stdout
    # ... and from the environment, like the server's own variables.
    result = script("--json", "stats", env={"CHATSRV_ADMIN_URL": http_server.http_url,
                                            "CHATSRV_DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 0 and json.loads(result.stdout)["users"] == 1
    result = script("--json", "stats", env={"CHATSRV_ADMIN_URL": http_server.http_url,
                                            "CHATSRV_ADMIN_TOKEN": http_server.api.token})
    assert result.returncode == 0


def test_script_exit_codes_and_one_line_errors(http_server, tmp_path):
    url = http_server.http_url
    cases = [
        # (args, exit code, stderr starts with)
        (["--url", url, "--data-dir", str(tmp_path / "none"), "users"], 2,
         "error: no admin token:"),
        (["--url", url, "--token", "t", "kick"], 2, "error: Missing argument"),
        (["--url", url, "--token", "t", "frobnicate"], 2, "error: No such command"),
        (["--url", "ftp://x", "users"], 2, "error: Invalid value for --url"),
        (["--url", url, "--token", "t", "users"], 1, "error: the server refused"),
        (["--url", url, "--token", http_server.api.token, "group", "nope"], 1,
         "error: no such group: nope"),
        (["--url", "http://127.0.0.1:1", "--token", "t", "stats"], 3, "error: cannot reach"),
        (["--url", "http://127.0.0.1:1", "health"], 3, "error: cannot reach"),
        (["--url", f"http://{http_server.host}:{http_server.port}", "--token", "t", "stats"], 3,
         "error: no HTTP server at"),
    ]
    for args, code, start in cases:
        env = {}
        if "--token" in args:  # from the environment: on the command line it adds a warning
            at = args.index("--token")
            env["CHATSRV_ADMIN_TOKEN"] = args[at + 1]
            args = args[:at] + args[at + 2:]
        result = script(*args, env=env)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(start), (args, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr
    assert script("--help").returncode == 0
    assert script().returncode == 2


def test_health_is_1_while_shutting_down(make_http_server, login):
    server = make_http_server(rate_limit=0, shutdown_grace=3, sendq=16 << 20)
    stall_shutdown(server, login)
    deadline = time.monotonic() + 5
    while server.api.get("/readyz", token=None)[0] == 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    result = script("--url", server.http_url, "health")
    assert result.returncode == 1 and "not ready (shutting down)" in result.stdout


def test_top_stops_cleanly_on_ctrl_c(http_server):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATSRV_")}
    proc = subprocess.Popen(
        [*ADMIN, "--url", http_server.http_url, "--token", http_server.api.token, "top",
         "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean,
    )
    try:
        assert "msgs/s" in proc.stdout.readline()  # the header
        assert proc.stdout.readline().strip()  # a first row: it is refreshing
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Aborted" not in err


# ---------------------------------------------------------------- the token stays home


def test_token_on_the_command_line_warns(http_server):
    result = script("--url", http_server.http_url, "--token", http_server.api.token, "stats")
    assert result.returncode == 0
    assert result.stderr.startswith("warning: --token on the command line is visible")
    assert http_server.api.token not in result.stderr


def test_token_file_option(http_server, tmp_path):
    path = tmp_path / "tok"
    path.write_text(http_server.api.token + "\n")
    result = script("--url", http_server.http_url, "--token-file", str(path), "--json", "stats")
    assert result.returncode == 0 and result.stderr == ""
    result = script("--url", http_server.http_url, "--json", "stats",
                    env={"CHATSRV_ADMIN_TOKEN_FILE": str(path)})
    assert result.returncode == 0 and result.stderr == ""


class _Recorder(BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):  # noqa: N802
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        location = getattr(self.server, "location", None)
        self.send_response(302 if location else 200)
        if location:
            self.send_header("Location", location + self.path)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def _serve_http(location: str | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.location = location  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_redirect_is_not_followed_with_the_token():
    _Recorder.seen = []
    elsewhere = _serve_http()
    redirector = _serve_http(f"http://localhost:{elsewhere.server_port}")
    try:
        result = script("--url", f"http://127.0.0.1:{redirector.server_port}", "users",
                        env={"CHATSRV_ADMIN_TOKEN": "the-secret-token-123"})
    finally:
        redirector.shutdown()
        elsewhere.shutdown()
    assert result.returncode == 1
    assert result.stderr.startswith("error: the server answered HTTP 302 (redirect to ")
    assert _Recorder.seen == [("/api/v1/users", "Bearer the-secret-token-123")]  # only --url's host

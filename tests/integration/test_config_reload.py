"""The config file at start, `chatsrv config`, live reload (SIGHUP, the API, chatsrv-admin),
systemd's notify protocol and unit file: against real server processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Client

ROOT = Path(__file__).resolve().parents[2]
CHATSRV = [sys.executable, "-m", "chatsrv"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATSRV_")}
    return subprocess.run([*CHATSRV, *args], capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})})


def wait_for(predicate, what: str, timeout: float = 20.0):
    """Poll until `predicate()` is truthy (a deadline against hanging, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def make_pair(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def tls_client(server) -> Client:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((server.host, server.port), timeout=10)
    return Client(server.host, server.port, sock=ctx.wrap_socket(raw))


def tls_login(server, name: str) -> Client:
    client = tls_client(server)
    client.expect("enter a username:")
    client.send(name)
    client.expect(f"connected! welcome {name}", "you joined the group General")
    return client


def peer_cert(client: Client) -> bytes:
    der = client.sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def file_der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


# ---------------------------------------------------------------- refused at start


@pytest.mark.parametrize(("text", "message"), [
    ("port = [\n", "not valid TOML"),
    ("max_client = 5\n", "unknown key 'max_client' (did you mean 'max_clients'?)"),
    ('rate_limit = "fast"\n', "key 'rate_limit': expected a number, got a string ('fast')"),
    ('tls_cert = "missing.pem"\ntls_key = "missing.key"\n', "key 'tls_cert': "),
])
def test_a_bad_config_file_is_refused_at_start_with_one_line(tmp_path, text, message):
    path = tmp_path / "chatsrv.toml"
    path.write_text(text)
    runs = [(["serve", "--config", str(path), "--port", "0", "--web-port", "0"], None)]
    if "TOML" in message:  # the other ways in, once (each run is a process start)
        runs += [(["serve", "--port", "0", "--web-port", "0"], {"CHATSRV_CONFIG": str(path)}),
                 (["config", "check", str(path)], None)]
    for args, env in runs:
        result = run(*args, env=env)
        assert result.returncode == 2, result
        assert result.stderr.startswith(f"error: {path}: "), result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_an_unreadable_config_file_is_refused(tmp_path):
    result = run("serve", "--config", str(tmp_path), "--port", "0")  # a directory
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path}: cannot read the config file: Is a directory\n"


def test_config_check_and_show(tmp_path):
    assert run("config", "check", str(ROOT / "deploy" / "chatsrv.toml")).stdout.endswith(": ok\n")
    path = tmp_path / "chatsrv.toml"
    path.write_text('max_clients = 5\nmax_per_ip = 6\nadmin_token = "file-secret"\n')
    result = run("config", "show", "--config", str(path), "--max-per-ip", "60",
                 env={"CHATSRV_RATE_LIMIT": "7", "CHATSRV_MAX_CLIENTS": "50"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "max_clients = 50  # env CHATSRV_MAX_CLIENTS" in lines
    assert "max_per_ip = 60  # flag" in lines
    assert "rate_limit = 7.0  # env CHATSRV_RATE_LIMIT" in lines
    assert f'admin_token = "<redacted>"  # file {path}' in lines
    assert "sendq = 1048576  # default" in lines
    assert 'trusted_proxies = ""  # default' in lines
    proxied = run("config", "show", "--trusted-proxies", "10.0.0.0/8",
                  env={"CHATSRV_TRUSTED_PROXIES": "192.0.2.1"})
    assert 'trusted_proxies = "10.0.0.0/8"  # flag' in proxied.stdout.splitlines()
    bad_proxy = run("config", "show", env={"CHATSRV_TRUSTED_PROXIES": "nginx"})
    assert bad_proxy.returncode == 2 and "--trusted-proxies: not an address" in bad_proxy.stderr
    assert "file-secret" not in result.stdout
    bad = run("config", "show", "--max-clients", "many")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_flags_win_over_the_file_when_serving(make_server, login, tmp_path):
    path = tmp_path / "chatsrv.toml"
    path.write_text('exempt = ""\nmax_per_ip = 1\nrate_limit = 0\n')
    server = make_server(config=path, max_per_ip=2)
    login(server, "alice")
    login(server, "bob")
    third = Client(server.host, server.port)
    assert third.read_line() == "error: too many connections from your address"


# ---------------------------------------------------------------- reload


def reloads_logged(server) -> int:
    return server.log().count("chatsrv.server: reload")


def test_sighup_reloads_and_keeps_everyone(make_server, login, tmp_path):
    path = tmp_path / "chatsrv.toml"
    path.write_text('exempt = ""\nmax_per_ip = 2\nrate_limit = 0\nstore = "memory"\n')
    server = make_server(config=path)
    alice = login(server, "alice")
    bob = login(server, "bob")
    third = Client(server.host, server.port)
    assert third.read_line() == "error: too many connections from your address"
    path.write_text('exempt = ""\nmax_per_ip = 3\nrate_limit = 0\nstore = "sqlite"\n')
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reloads_logged(server) == 1, "the reload")
    assert "reload: changed max_per_ip: 2 -> 3; needs a restart: store: " in server.log()
    assert server.proc.poll() is None
    login(server, "carol")  # the new limit
    alice.send("public General still here")
    bob.read_until(lambda line: line == "[public group General from alice] still here")
    # An invalid file changes nothing, and a second SIGHUP is handled too.
    path.write_text("max_per_ip = \n")
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused, nothing changed: " in server.log(), "the refusal")
    assert f"nothing changed: {path}: not valid TOML" in server.log()
    assert server.proc.poll() is None
    alice.sync()
    refused = Client(server.host, server.port)
    assert refused.read_line() == "error: too many connections from your address"


def test_reload_through_the_api_and_chatsrv_admin(make_http_server, tmp_path):
    path = tmp_path / "chatsrv.toml"
    path.write_text("notice_limit = 10\n")
    server = make_http_server(config=path, admin_token="tok-en")
    # host is also a flag (start_server's): the flag still wins, so it does not change.
    path.write_text('notice_limit = 20\nlog_format = "json"\nhost = "::1"\nflush_ms = 70\n')
    status, body = server.api.post("/api/v1/reload")
    assert status == 200
    assert body == {"ok": True, "changed": ["notice_limit: 10 -> 20",
                                             'log_format: "text" -> "json"'],
                    "restart_needed": ["flush_ms: 50 -> 70"]}
    path.write_text("notice_limit = -1\n")
    status, body = server.api.post("/api/v1/reload")
    assert status == 400 and not body["ok"]
    assert body["error"] == f"{path}: key 'notice_limit': --notice-limit must be >= 0 (0 = always)"
    assert server.api.post("/api/v1/reload", token="wrong")[0] == 401
    path.write_text("notice_limit = 30\n")
    # The token from the environment: on the command line chatsrv-admin warns first.
    admin = [sys.executable, "-m", "chatsrv_admin", "--url", server.http_url]
    env = {**os.environ, "CHATSRV_ADMIN_TOKEN": "tok-en"}
    result = subprocess.run([*admin, "reload"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "reloaded: notice_limit: 20 -> 30" in result.stdout
    path.write_text("notice_limit = x\n")
    result = subprocess.run([*admin, "reload"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {path}: not valid TOML")


def history_texts(client: Client, group: str, count: int) -> list[str]:
    client.send(f"history {group} {count}")
    answer = client.read_until(lambda line: line == f"ok: end of history {group}")
    return [line.rpartition("] ")[2] for line in answer if line.startswith("[history ")]


def test_reloading_history_size(make_http_server, login, tmp_path):
    path = tmp_path / "chatsrv.toml"
    path.write_text("history = 5\nrate_limit = 0\nflush_ms = 1\n")
    server = make_http_server(config=path)
    alice = login(server, "alice")
    for i in range(5):
        alice.send(f"public General m{i}")
    assert history_texts(alice, "General", 20) == [f"m{i}" for i in range(5)]
    path.write_text("history = 2\nrate_limit = 0\nflush_ms = 1\n")
    assert server.api.post("/api/v1/reload")[1]["changed"] == ["history: 5 -> 2"]
    assert history_texts(alice, "General", 20) == ["m3", "m4"]
    alice.send("public General m5")
    assert history_texts(alice, "General", 20) == ["m4", "m5"]
    # Larger again: the ring fills up to the new size (what older messages the
    # store still has depends on when it pruned: not asserted).
    path.write_text("history = 4\nrate_limit = 0\nflush_ms = 1\n")
    assert server.api.post("/api/v1/reload")[1]["changed"] == ["history: 2 -> 4"]
    alice.send("public General m6")
    alice.send("public General m7")
    assert history_texts(alice, "General", 20)[-4:] == ["m4", "m5", "m6", "m7"]
    assert history_texts(alice, "General", 3) == ["m5", "m6", "m7"]
    path.write_text("history = 0\nrate_limit = 0\nflush_ms = 1\n")
    body = server.api.post("/api/v1/reload")[1]
    assert body["changed"] == [] and body["restart_needed"] == ["history: 4 -> 0"]
    assert history_texts(alice, "General", 3) == ["m5", "m6", "m7"]


def test_certificate_rotation_keeps_sessions_and_refuses_a_broken_pair(make_http_server,
                                                                        tmp_path):
    old_cert, old_key = make_pair(tmp_path, "old")
    new_cert, new_key = make_pair(tmp_path, "new")
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(old_cert, cert)
    shutil.copy(old_key, key)
    path = tmp_path / "chatsrv.toml"
    path.write_text(f'tls_cert = "{cert}"\ntls_key = "{key}"\nrate_limit = 0\n')
    server = make_http_server(config=path)
    alice = tls_login(server, "alice")
    assert peer_cert(alice) == file_der(old_cert)
    # Renewed in place, as certbot does; SIGHUP as `systemctl reload` does.
    shutil.copy(new_cert, cert)
    shutil.copy(new_key, key)
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "tls certificate and key: reloaded" in server.log(), "the reload")
    bob = tls_login(server, "bob")
    assert peer_cert(bob) == file_der(new_cert)
    alice.send("public General after the rotation")  # the old session goes on
    bob.read_until(lambda line: line == "[public group General from alice] after the rotation")
    # A broken pair (the key of another certificate): the running one is kept.
    shutil.copy(old_key, key)
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "the certificate and key do not load" in server.log(), "the refusal")
    status, body = server.api.post("/api/v1/reload")
    assert status == 400 and "the certificate and key do not load" in body["error"]
    carol = tls_login(server, "carol")
    assert peer_cert(carol) == file_der(new_cert)
    alice.sync()
    bob.sync()


def test_reloads_during_heavy_fan_out_lose_nothing(make_http_server, login, tmp_path):
    path = tmp_path / "chatsrv.toml"
    configs = ["rate_limit = 0\nnotice_limit = 5\nmax_clients = 500\nsendq = 4194304\n",
               'rate_limit = 0\nnotice_limit = 50\nmax_clients = 600\nsendq = 8388608\n'
               'log_level = "warning"\n']
    path.write_text(configs[0])
    server = make_http_server(config=path, store="memory")
    receivers = [login(server, f"r{i}") for i in range(40)]
    sender = login(server, "sender")
    for r in receivers:
        r.sync()
    messages = 1500
    done = threading.Event()
    answers: list[tuple[int, object]] = []

    def reload_loop() -> None:
        i = 0
        while not done.is_set():
            i += 1
            path.write_text(configs[i % 2])
            answers.append(server.api.post("/api/v1/reload"))

    reloader = threading.Thread(target=reload_loop)
    reloader.start()
    try:
        batch = 100
        for start in range(0, messages, batch):
            sender.send("".join(f"public General m{n}\n" for n in range(start, start + batch)))
        sender.sync()
    finally:
        done.set()
        reloader.join()
    assert answers and all(status == 200 and body["ok"] for status, body in answers), answers[:3]
    prefix = "[public group General from sender] "
    for r in receivers:
        got = [line[len(prefix):] for line in r.read_until(lambda x: x == prefix + f"m{messages - 1}")
               if line.startswith(prefix)]
        assert got == [f"m{n}" for n in range(messages)], r.name
        r.sync()  # still connected
    status, stats = server.api.get("/api/v1/stats")
    assert stats["users"] == len(receivers) + 1
    assert sum(stats["disconnects"].values()) == 0


# ---------------------------------------------------------------- systemd


def test_notify_protocol_ready_reloading_stopping(make_server, tmp_path, monkeypatch):
    address = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(20)
        monkeypatch.setenv("NOTIFY_SOCKET", str(address))
        server = make_server(rate_limit=0)
        ready = sock.recv(4096).decode().split("\n")
        assert ready[0] == "READY=1"
        assert f"MAINPID={server.pid}" in ready
        assert f"STATUS=listening on 127.0.0.1:{server.port}" in ready
        server.proc.send_signal(signal.SIGHUP)
        assert sock.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert sock.recv(4096).decode() == "READY=1\nSTATUS=reloaded"
        server.proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode() == "STOPPING=1\nSTATUS=shutting down"
        assert server.proc.wait(20) == 0


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing on CI (Debian package: systemd)")
        pytest.skip("systemd-analyze is not installed")
    text = (ROOT / "deploy" / "systemd" / "chatsrv.service").read_text()
    assert "Type=notify" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
    # verify wants ExecStart's program to exist: the chatsrv installed with this tree.
    chatsrv = Path(sys.executable).with_name("chatsrv")
    assert chatsrv.exists()
    unit = tmp_path / "chatsrv.service"
    unit.write_text(text.replace("/usr/local/bin/chatsrv", str(chatsrv)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{unit}:" not in result.stderr, result.stderr  # no unknown key, no bad value


def test_reload_token_ttl_applies_to_new_tokens_and_accounts_needs_a_restart(
        make_http_server, login, tmp_path):
    path = tmp_path / "chatsrv.toml"
    path.write_text('accounts = "optional"\nrate_limit = 0\n')
    server = make_http_server(config=path, admin_token="tok-en")
    alice = login(server, "alice")
    assert alice.request("register correct-horse") == "ok: registered alice"
    path.write_text('accounts = "required"\nrate_limit = 0\ntoken_ttl = 600\n')
    status, body = server.api.post("/api/v1/reload")
    assert status == 200
    assert body == {"ok": True, "changed": ["token_ttl: 2592000.0 -> 600.0"],
                    "restart_needed": ['accounts: "optional" -> "required"']}
    before = time.time()
    reply = alice.request("token")
    assert reply.startswith("ok: token ")
    expiry = int(reply.split()[2].split(".")[1], 36)  # the token's expiry (core.accounts)
    assert before + 600 - 2 <= expiry <= time.time() + 600 + 1
    login(server, "guest")  # still optional: a guest gets in

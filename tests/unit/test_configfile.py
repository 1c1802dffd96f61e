"""The --config file: keys and types from Config, precedence, errors, `show`, reload plans."""

from __future__ import annotations

import os
import socket
from dataclasses import fields
from pathlib import Path

import pytest

from chatsrv import sdnotify
from chatsrv.config import Config, ConfigError
from chatsrv.configfile import (
    DEFAULT,
    ENV,
    FILE,
    FLAG,
    KEYS,
    read_file,
    redact_url,
    resolve,
    show,
)
from chatsrv.core.createrate import CreateRate
from chatsrv.core.limits import AddressLimits, parse_networks
from chatsrv.core.ratelimit import RateLimiter
from chatsrv.reload import LIVE, RESTART, reload_plan, retune

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "chatsrv.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_serve_option_is_a_key_of_its_type():
    assert set(KEYS) == {f.name for f in fields(Config)} - {"reuse_port"}
    assert KEYS["max_clients"] == (int, False)
    assert KEYS["rate_limit"] == (float, False)
    assert KEYS["tls_cert"] == (Path, True)
    assert KEYS["admin_token"] == (str, True)
    # Every setting is either applied by a reload or reported as needing a restart.
    assert LIVE | RESTART == set(KEYS)
    assert not LIVE & RESTART


def test_file_values_typed_either_spelling_paths_relative_to_the_file(tmp_path):
    path = write(tmp_path, 'max-clients = 7\nrate_limit = 5\ndata_dir = "state"\n'
                 'log_level = "debug"\ntls_cert = "/abs/cert.pem"\n')
    values = read_file(path)
    assert values == {"max_clients": 7, "rate_limit": 5.0, "data_dir": tmp_path / "state",
                      "log_level": "debug", "tls_cert": Path("/abs/cert.pem")}
    assert isinstance(values["rate_limit"], float)


@pytest.mark.parametrize(("text", "message"), [
    ("max_clientz = 3\n", "unknown key 'max_clientz' (did you mean 'max_clients'?)"),
    ("reuse_port = true\n", "unknown key 'reuse_port'"),
    ("[server]\nport = 1\n", "unknown key 'server'"),
    ('max_clients = "3"\n', "key 'max_clients': expected an integer, got a string ('3')"),
    ("max_clients = 3.5\n", "key 'max_clients': expected an integer, got a float (3.5)"),
    ("max_clients = true\n", "key 'max_clients': expected an integer, got a boolean (True)"),
    ("rate_limit = false\n", "key 'rate_limit': expected a number, got a boolean"),
    ("host = 1\n", "key 'host': expected a string, got an integer (1)"),
    ('admin_token = 5\n', "key 'admin_token': expected a string, got an integer (<redacted>)"),
    ('data_dir = ""\n', "key 'data_dir': expected a path, got an empty string"),
    ("max_clients = 3\nmax-clients = 4\n", "key 'max-clients' is set twice"),
    ("max_clients = \n", "not valid TOML: "),
    ("port = 1\nport = 2\n", "not valid TOML: "),
])
def test_bad_files_are_refused_naming_file_key_and_expectation(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        resolve({}, path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_not_utf8_and_unreadable_files(tmp_path):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00port = 1")
    with pytest.raises(ConfigError, match="not a TOML file: not UTF-8"):
        read_file(binary)
    with pytest.raises(ConfigError, match="cannot read the config file: No such file"):
        read_file(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read the config file: Is a directory"):
        read_file(tmp_path)


@pytest.mark.parametrize(("text", "message"), [
    ("max_clients = 0\n", "key 'max_clients': --max-clients must be at least 1"),
    ('exempt = "nonsense"\n', "key 'exempt': --exempt: not an address or CIDR network"),
    ('redis = "http://x"\n', "key 'redis': --redis must be redis://HOST:PORT/DB"),
    ('tls_key = "k.pem"\n', "key 'tls_key': --tls-cert and --tls-key go together"),
])
def test_config_checks_name_the_key_of_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        resolve({}, path)
    assert str(err.value).startswith(f"{path}: {message}")


def test_missing_or_broken_certificate_is_refused(tmp_path, tls_files):
    path = write(tmp_path, 'tls_cert = "nope.pem"\ntls_key = "nope.key"\n')
    with pytest.raises(ConfigError) as err:
        resolve({}, path)
    assert str(err.value) == (f"{path}: key 'tls_cert': {tmp_path / 'nope.pem'}: No such file "
                              "or directory (expected a readable file with a PEM certificate)")
    cert, key = tls_files
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    path = write(tmp_path, f'tls_cert = "{garbage}"\ntls_key = "{key}"\n')
    with pytest.raises(ConfigError, match="the certificate and key do not load"):
        resolve({}, path)
    # Given as flags: the message names the flag.
    with pytest.raises(ConfigError, match="^--tls-key: .*nope.key: No such file"):
        resolve({"tls_cert": (cert, FLAG), "tls_key": (tmp_path / "nope.key", FLAG)}, None)
    assert resolve({}, write(tmp_path, f'tls_cert = "{cert}"\ntls_key = "{key}"\n')).config.tls


def test_precedence_flag_env_file_default(tmp_path):
    path = write(tmp_path, "max_clients = 7\nmax_per_ip = 8\nrate_limit = 9.0\n")
    resolved = resolve({"max_per_ip": (80, ENV), "rate_limit": (90.0, FLAG)}, path)
    config = resolved.config
    assert (config.max_clients, config.max_per_ip, config.rate_limit) == (7, 80, 90.0)
    assert config.sendq == Config().sendq
    assert resolved.origins["max_clients"] == FILE
    assert resolved.origins["max_per_ip"] == ENV
    assert resolved.origins["rate_limit"] == FLAG
    assert resolved.origins["sendq"] == DEFAULT
    # A reload reads the file again; the flags and variables still win.
    path.write_text("max_clients = 70\nmax_per_ip = 1\n")
    again = resolved.reload().config
    assert (again.max_clients, again.max_per_ip, again.rate_limit) == (70, 80, 90.0)


def test_show_says_where_values_came_from_and_redacts_secrets(tmp_path):
    path = write(tmp_path, 'admin_token = "hunter2"\nredis = "redis://u:pw@localhost:6379/0"\n'
                 "max_clients = 5\n")
    text = show(resolve({"port": (0, FLAG), "rate_limit": (3.0, ENV)}, path))
    assert "hunter2" not in text and ":pw@" not in text
    assert 'admin_token = "<redacted>"  # file ' in text
    assert 'redis = "redis://u:<redacted>@localhost:6379/0"' in text
    assert f"max_clients = 5  # file {path}" in text
    assert "port = 0  # flag" in text
    assert "rate_limit = 3.0  # env CHATSRV_RATE_LIMIT" in text
    assert "# tls_cert is not set  # default" in text
    assert redact_url("redis://:pw@h:1/0") == "redis://:<redacted>@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


def test_the_deploy_example_passes_check():
    resolved = resolve({}, ROOT / "deploy" / "chatsrv.toml")
    assert resolved.config.data_dir == Path("/var/lib/chatsrv")
    assert FILE in resolved.origins.values()


def test_reload_plan_applies_live_settings_and_keeps_the_others(tmp_path):
    old = Config(port=1, max_clients=10, history=5, admin_token="old-secret")
    new = Config(port=2, max_clients=20, history=6, admin_token="new-secret", log_format="json")
    plan = reload_plan(old, new)
    assert plan.changed == ("max_clients: 10 -> 20", "history: 5 -> 6",
                            'log_format: "text" -> "json"')
    assert plan.restart_needed == ("port: 1 -> 2", 'admin_token: "<redacted>" -> "<redacted>"')
    effective = plan.effective
    assert (effective.port, effective.history, effective.admin_token) == (1, 6, "old-secret")
    assert (effective.max_clients, effective.log_format) == (20, "json")
    # History turned off (or on) changes what the store keeps and the command: a restart.
    plan = reload_plan(old, Config(port=1, max_clients=10, history=0, admin_token="old-secret"))
    assert plan.restart_needed == ("history: 5 -> 0",) and plan.effective.history == 5
    # Turning TLS on or off changes what the port speaks: a restart.
    plan = reload_plan(old, Config(port=1, max_clients=10, history=5, admin_token="old-secret",
                                   tls_cert=Path("c"), tls_key=Path("k")))
    assert plan.changed == ()
    assert [line.split(":")[0] for line in plan.restart_needed] == ["tls_cert", "tls_key"]
    assert plan.effective.tls_cert is None


def test_retuned_limiters():
    now = [0.0]
    limiter = RateLimiter(10.0, lambda: now[0])
    assert retune(limiter, 0) is None
    same = retune(limiter, 2.0)
    assert same is limiter and (limiter.rate, limiter.burst, limiter.tokens) == (2.0, 4.0, 4.0)
    assert retune(None, 5.0) is not None
    limits = AddressLimits(max_per_ip=1, rate=0, exempt=(), clock=lambda: now[0])
    assert limits.admit("10.0.0.1") is None
    assert limits.admit("10.0.0.1") == "per_ip"
    limits.configure(max_per_ip=2, rate=0, exempt=())
    assert limits.admit("10.0.0.1") is None
    limits.configure(max_per_ip=0, rate=0, exempt=parse_networks("10.0.0.0/8"))
    assert limits.key("10.0.0.1") is None
    rate = CreateRate(60.0, lambda: now[0])
    for _ in range(120):
        assert rate.take("a")
    assert not rate.take("a")
    rate.retune(6000.0)
    now[0] += 1.0  # 100 per second now
    assert rate.take("a")


def test_sd_notify_reaches_a_datagram_socket(tmp_path, monkeypatch):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        assert sdnotify.ready("listening", main_pid=True)
        assert sock.recv(4096).decode() == f"READY=1\nSTATUS=listening\nMAINPID={os.getpid()}"
        assert sdnotify.stopping()
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=shutting down"
        assert sdnotify.reloading()
        assert sock.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:  # an abstract address
        name = f"chatsrv-test-{os.getpid()}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.notify("READY=1")  # not under systemd: nothing to do
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert not sdnotify.notify("READY=1")  # a socket that is gone: a warning, no exception


def test_workers_read_the_file_themselves(tmp_path):
    from chatsrv.backplane.workers import worker_argv

    path = write(tmp_path, 'max_clients = 7\nredis = "redis://127.0.0.1:6379/0"\nworkers = 2\n'
                 'admin_token = "in-the-file"\n')
    resolved = resolve({"rate_limit": (5.0, FLAG), "admin_token": ("from-env", ENV)}, path)
    argv = worker_argv(resolved.config, 1, 4321, "n", resolved)
    flags = argv[argv.index("serve") + 1:]
    assert flags[:2] == ["--config", str(path)]
    pairs = dict(zip(flags[2:-1:2], flags[3:-1:2], strict=True))
    assert pairs == {"--rate-limit": "5.0", "--workers": "1", "--port": "4321",
                     "--node-id": "n-w1", "--http-port": str(9150 + 1)}
    assert flags[-1] == "--reuse-port"
    assert "from-env" not in argv and "in-the-file" not in argv  # secrets never in argv
    # Without a file: every value as a flag, as before.
    plain = worker_argv(resolved.config, 0, 4321, "n")
    assert "--max-clients" in plain and "--config" not in plain


def test_accounts_options_in_the_file_show_and_reload(tmp_path):
    path = write(tmp_path, 'accounts = "required"\ntoken-ttl = 3600\n')
    resolved = resolve({}, path)
    assert (resolved.config.accounts, resolved.config.token_ttl) == ("required", 3600.0)
    text = show(resolved)
    assert f'accounts = "required"  # file {path}' in text
    assert f"token_ttl = 3600.0  # file {path}" in text
    with pytest.raises(ConfigError, match="accounts"):
        resolve({}, write(tmp_path, 'accounts = "sometimes"\n'))
    with pytest.raises(ConfigError, match="token_ttl"):
        resolve({}, write(tmp_path, "token_ttl = 1\n"))
    # token_ttl applies to the tokens minted after a reload; the mode needs a restart.
    plan = reload_plan(Config(), Config(accounts="required", token_ttl=3600.0))
    assert plan.changed == ("token_ttl: 2592000.0 -> 3600.0",)
    assert plan.restart_needed == ('accounts: "optional" -> "required"',)
    assert (plan.effective.accounts, plan.effective.token_ttl) == ("optional", 3600.0)

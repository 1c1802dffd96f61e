"""Accounts through the admin API and `chatsrv-admin accounts`, with real clients."""

from __future__ import annotations

import csv
import io
import os
import sqlite3
from pathlib import Path

import pytest
from chatsrv_admin.cli import app
from conftest import Client
from typer.testing import CliRunner

PROMPT = "enter a username:"


@pytest.fixture
def srv(make_http_server):
    # Debug logging: not even there may a password or token appear.
    return make_http_server(rate_limit=0, accounts="optional", log_level="debug")


def log_in(server, line: str) -> Client:
    client = Client(server.host, server.port)
    client.expect(PROMPT)
    client.send(line)
    return client


def welcomed(client: Client, name: str) -> None:
    client.expect(f"connected! welcome {name}", "you joined the group General")


def test_create_list_and_log_in(srv):
    api = srv.api
    assert api.call("POST", "/api/v1/accounts", {"name": "alice", "password": "correct-horse"}) \
        == (201, {"name": "alice"})
    status, made = api.call("POST", "/api/v1/accounts", {"name": "Bob"})
    assert status == 201 and made["name"] == "Bob" and len(made["password"]) >= 16
    assert api.call("POST", "/api/v1/accounts", {"name": "ALICE"})[0] == 409
    assert api.call("POST", "/api/v1/accounts", {"name": "bad name!"})[0] == 400
    status, err = api.call("POST", "/api/v1/accounts", {"name": "carol", "password": "short"})
    assert status == 400 and "invalid password" in err["error"]
    listed = api.ok("GET", "/api/v1/accounts")["accounts"]
    assert [(a["name"], a["last_login"], a["suspended"]) for a in listed] == [
        ("alice", None, False), ("Bob", None, False)]
    assert set(listed[0]) == {"name", "created_at", "last_login", "suspended"}
    welcomed(log_in(srv, f"bob {made['password']}"), "Bob")
    welcomed(log_in(srv, "alice correct-horse"), "alice")
    listed = {a["name"]: a for a in api.ok("GET", "/api/v1/accounts")["accounts"]}
    assert listed["alice"]["last_login"] is not None and listed["Bob"]["last_login"] is not None


def test_look_alike_account_names_are_taken(srv):
    """PROTOCOL.md v2 "Look-alike names": accounts too. An account of a name that
    looks like another account's is refused as existing (admin API, `register`),
    and a guest cannot log in with a look-alike of an account's name."""
    api = srv.api
    api.ok("POST", "/api/v1/accounts", {"name": "alice", "password": "correct-horse"})
    assert api.call("POST", "/api/v1/accounts", {"name": "\u0430lice"}) == (  # Cyrillic a
        409, {"error": "account exists: alice"})
    assert api.call("POST", "/api/v1/accounts", {"name": "alice\u200c"})[0] == 409
    guest = log_in(srv, "\u0430lice")
    guest.expect("error: username taken: \u0430lice", PROMPT)
    guest.send("\uff41lice")  # fullwidth a
    guest.expect("error: username taken: \uff41lice", PROMPT)
    guest.send("bob")
    welcomed(guest, "bob")
    # An administrator makes a look-alike of the guest's name an account meanwhile:
    # the guest's own name can no longer become one.
    api.ok("POST", "/api/v1/accounts", {"name": "b\u043eb", "password": "cyrillic-o"})
    assert guest.request("register bobs-password") == "error: already registered: bob"
    listed = [a["name"] for a in api.ok("GET", "/api/v1/accounts")["accounts"]]
    assert listed == ["alice", "b\u043eb"]
    welcomed(log_in(srv, "alice correct-horse"), "alice")
    # `admin` is the administrators' name in notices and the audit: nobody's, in no form.
    for name in ("admin", "ADMIN", "\u0430dmin"):
        other = Client(srv.host, srv.port)
        other.expect(PROMPT)
        other.send(name)
        other.expect(f"error: username taken: {name}", PROMPT)
        status, body = api.call("POST", "/api/v1/accounts", {"name": name, "password": "x" * 12})
        assert status == 400 and body["error"] == \
            f"invalid name: {name} is reserved for administrators", body


def test_reset_suspend_unsuspend_delete(srv):
    api = srv.api
    api.ok("POST", "/api/v1/accounts", {"name": "alice", "password": "correct-horse"})
    alice = log_in(srv, "alice correct-horse")
    welcomed(alice, "alice")
    assert api.call("POST", "/api/v1/accounts/nobody/password", {})[0] == 404
    reset = api.ok("POST", "/api/v1/accounts/alice/password", {})
    assert len(reset["password"]) >= 16
    log_in(srv, "alice correct-horse").expect("error: login failed", PROMPT)
    newer = log_in(srv, f"alice {reset['password']}")
    welcomed(newer, "alice")
    alice.expect("* disconnected: logged in from another connection")
    assert api.ok("POST", "/api/v1/accounts/alice/suspend", {}) == {
        "name": "alice", "suspended": True}
    newer.expect("* disconnected by an administrator")
    log_in(srv, f"alice {reset['password']}").expect("error: account suspended: alice", PROMPT)
    api.ok("POST", "/api/v1/accounts/alice/unsuspend", {})
    again = log_in(srv, f"alice {reset['password']}")
    welcomed(again, "alice")
    assert api.call("DELETE", "/api/v1/accounts/alice")[0] == 204
    again.expect("* disconnected by an administrator")
    assert again.closed()
    assert api.call("DELETE", "/api/v1/accounts/alice")[0] == 404
    welcomed(log_in(srv, "alice"), "alice")  # optional mode: the name is a guest's again


def test_suspend_ends_the_session(srv):
    srv.api.ok("POST", "/api/v1/accounts", {"name": "mallory", "password": "s3cret-pw"})
    mallory = log_in(srv, "mallory s3cret-pw")
    welcomed(mallory, "mallory")
    srv.api.ok("POST", "/api/v1/accounts/mallory/suspend", {})
    mallory.expect("* disconnected by an administrator")
    assert mallory.closed()


def test_no_password_in_clear_anywhere(srv, tmp_path):
    password = "Unique-Pa55word-7f3a"
    srv.api.ok("POST", "/api/v1/accounts", {"name": "alice", "password": password})
    client = log_in(srv, "alice")
    client.expect("password for alice:")
    client.send(password)
    welcomed(client, "alice")
    log_in(srv, "alice wrong-" + password).expect("error: login failed", PROMPT)
    client.send("exit")
    client.expect("ok: bye")
    metrics = srv.api.metrics()
    accounts = str(srv.api.ok("GET", "/api/v1/accounts"))
    srv.stop()
    found = []
    for path in Path(tmp_path).rglob("*"):
        if path.is_file() and password.encode() in path.read_bytes():
            found.append(str(path))
    assert not found, f"password in clear in {found}"
    assert password not in metrics and password not in accounts
    db = sqlite3.connect(tmp_path / "data" / "chatsrv.db")
    (phc,) = db.execute("SELECT phc FROM accounts").fetchone()
    db.close()
    assert phc.startswith("$argon2id$v=19$m=19456,t=2,p=1$")  # what is kept instead


def test_accounts_disabled(make_http_server):
    server = make_http_server(rate_limit=0, accounts="off")
    status, err = server.api.call("GET", "/api/v1/accounts")
    assert status == 409 and "disabled" in err["error"]


@pytest.fixture
def admin(srv):
    runner = CliRunner()
    env = {k: None for k in os.environ if k.startswith("CHATSRV_")}

    def run(*args: str):
        return runner.invoke(app, ["--url", srv.http_url, "--token", srv.api.token, *args],
                             env=env)

    return run


def test_cli_add_list_reset_suspend_delete(admin, srv):
    result = admin("accounts", "add", "alice")
    assert result.exit_code == 0, result.output
    assert "created account alice" in result.output and "password: " in result.output
    generated = result.output.split("password: ")[1].split()[0]
    welcomed(log_in(srv, f"alice {generated}"), "alice")
    result = admin("accounts", "add", "alice", "--password", "correct-horse")
    assert result.exit_code == 1 and "exists" in result.output
    result = admin("accounts", "list")
    assert result.exit_code == 0 and "1 account" in result.output and "alice" in result.output
    assert admin("accounts", "reset", "alice", "--password", "new-password").exit_code == 0
    assert admin("accounts", "suspend", "alice").exit_code == 0
    assert '"suspended": true' in admin("accounts", "list", "--json").output
    assert admin("accounts", "unsuspend", "alice").exit_code == 0
    assert admin("accounts", "delete", "alice").exit_code == 0
    assert admin("accounts", "delete", "alice").exit_code == 1


def test_cli_import_a_class(admin, srv, tmp_path):
    srv.api.ok("POST", "/api/v1/accounts", {"name": "student07", "password": "already-here"})
    rows = ["name,password"] + [f"student{i:02d}," for i in range(1, 31)]
    rows[3] = "student03,chosen-password"
    rows.append("bad name!,")
    roster = tmp_path / "class.csv"
    roster.write_text("\n".join(rows) + "\n")
    result = admin("accounts", "import", str(roster))
    assert result.exit_code == 1  # the bad name
    created = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(created) == 29  # 30 students but student07, who existed
    passwords = {row["name"]: row["password"] for row in created}
    assert passwords["student03"] == "chosen-password"
    assert all(len(p) >= 16 for n, p in passwords.items() if n != "student03")
    assert "skipped: line 8: student07" in result.stderr
    assert "bad name!" in result.stderr
    welcomed(log_in(srv, f"student12 {passwords['student12']}"), "student12")


def test_a_deleted_accounts_token_does_not_open_a_new_account_of_that_name(srv):
    """PROTOCOL v2: a token works until the account is deleted; an account made
    again under the same name does not take the old tokens."""
    api = srv.api
    api.ok("POST", "/api/v1/accounts", {"name": "alice", "password": "correct-horse"})
    alice = log_in(srv, "alice correct-horse")
    welcomed(alice, "alice")
    token = alice.request("token").removeprefix("ok: token ")
    welcomed(log_in(srv, f"alice {token}"), "alice")
    assert api.call("DELETE", "/api/v1/accounts/alice")[0] == 204
    log_in(srv, f"alice {token}").expect("error: login failed", PROMPT)
    api.ok("POST", "/api/v1/accounts", {"name": "alice", "password": "other-horse"})
    log_in(srv, f"alice {token}").expect("error: login failed", PROMPT)
    welcomed(log_in(srv, "alice other-horse"), "alice")

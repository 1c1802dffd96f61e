"""The audit log and the admin API's moderation over real HTTP and sockets
(PROTOCOL.md v2 "Audit and administration"): every admin action and its
errors, administrators' powers on General and on a guest's group, the audit
of users' and administrators' actions (newest first, limit, group filter),
its durability across a restart and a migration from schema 3, and
`chatsrv_moderation_total`."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import pytest
from conftest import wait_for

from chatsrv import passwords
from chatsrv.core.accounts import Account
from chatsrv.store import sqlite as S

API = "/api/v1"
TOKEN = "secret-token"


def until(client, line: str) -> list[str]:
    return client.read_until(lambda got: got == line)


def ask(client, line: str) -> str:
    """The reply to `line`, past the notices and messages before it."""
    client.send(line)
    return client.read_until(lambda got: not got.startswith(("* ", "[")))[-1]


def enter(server, connect, name: str, password: str | None = None):
    client = connect(server)
    client.expect("enter a username:")
    client.send(name if password is None else f"{name} {password}")
    client.expect(f"connected! welcome {name}", "you joined the group General")
    return client


def audit(api, query: str = "") -> list[dict]:
    return api.ok("GET", API + "/audit" + query)["entries"]


def short(entries: list[dict]) -> list[tuple]:
    return [(e["actor"], e["action"], e["group"], e["target"], e["detail"]) for e in entries]


@pytest.fixture
def school(make_http_server, connect):
    """A server with accounts teach, ta, stud made through the admin API, each
    logged in; teach owns `class`, where stud is a member."""
    server = make_http_server(rate_limit=0, accounts="optional", admin_token=TOKEN)
    api = server.api
    for name in ("teach", "ta", "stud"):
        assert api.ok("POST", API + "/accounts", {"name": name, "password": f"{name}-password-1"})
    teach, ta, stud = (enter(server, connect, n, f"{n}-password-1") for n in ("teach", "ta", "stud"))
    assert ask(teach, "create class") == "ok: created group class"
    for client in (teach, stud):
        client.send("join class")
        until(client, "ok: joined group class")
    return server, teach, ta, stud


def test_every_admin_moderation_action(school):
    server, teach, ta, stud = school
    api = server.api

    def act(action: str, **body):
        status, answer = api.call("POST", f"{API}/groups/CLASS/{action}", body)
        assert status == 200, (action, status, answer)
        return answer["reply"], answer["group"]

    reply, view = act("mod", user="ta")
    assert reply == "ok: ta is a moderator of class" and view["moderators"] == ["ta"]
    until(ta, "* admin made you a moderator of class")
    assert act("unmod", user="TA")[1]["moderators"] == []
    reply, view = act("invite", user="ta")
    assert reply == "ok: invited ta to class" and view["invitations"] == ["ta"]
    until(ta, "* admin invited you to class")
    assert act("uninvite", user="ta")[1]["invitations"] == []
    reply, view = act("mute", user="stud", minutes=5)
    assert reply == "ok: muted stud in class for 5 minutes"
    [mute] = view["mutes"]
    assert mute["user"] == "stud" and mute["until"].endswith("Z")
    until(stud, "* admin muted you in class for 5 minutes")
    assert ask(stud, "public class hi") == "error: not allowed: you are muted in class"
    assert act("unmute", user="stud")[0] == "ok: unmuted stud in class"
    until(stud, "* admin unmuted you in class")
    assert act("mute", user="stud", minutes="7")[0] == "ok: muted stud in class for 7 minutes"
    assert act("mute", user="stud")[1]["mutes"] == [{"user": "stud", "until": None}]
    reply, view = act("kick", user="stud", reason="too loud")
    assert reply == "ok: removed stud from class" and view["members"] == ["teach"]
    until(stud, "* admin removed you from class: too loud")
    until(teach, "* stud was removed from class by admin")
    assert act("ban", user="stud")[1]["bans"] == ["stud"]
    assert ask(stud, "join class") == "error: not allowed: you are banned from class"
    assert act("unban", user="stud")[0] == "ok: unbanned stud from class"
    assert ask(stud, "join class") == "ok: joined group class"
    status, answer = api.call("POST", API + "/groups/class/settings",
                              {"join": "invite", "visibility": "private"})
    assert status == 200 and answer["replies"] == ["ok: set join invite in class",
                                                   "ok: set visibility private in class"]
    view = api.ok("GET", API + "/groups/class")
    assert view["owner"] == "teach" and view["settings"] == {
        "join": "invite", "post": "all", "history": "shared", "visibility": "private"}
    assert view["members"] == ["stud", "teach"]
    # Everything is in the audit, newest first, as `admin`.
    assert short(audit(api, "?limit=3")) == [
        ("admin", "set", "class", None, "visibility private"),
        ("admin", "set", "class", None, "join invite"),
        ("admin", "unban", "class", "stud", None),
    ]
    actions = [e["action"] for e in audit(api, "?group=class")]
    assert actions[::-1] == ["mod", "unmod", "invite", "uninvite", "mute", "unmute", "mute",
                             "mute", "kick", "ban", "unban", "set", "set"]
    assert [e["detail"] for e in audit(api, "?group=class") if e["action"] == "kick"] \
        == ["too loud"]
    text = api.metrics()
    assert 'chatsrv_moderation_total{action="mute"} 3.0' in text
    assert 'chatsrv_moderation_total{action="kick"} 1.0' in text
    assert 'chatsrv_moderation_total{action="set"} 2.0' in text


def test_admin_moderation_errors(school):
    server, teach, ta, stud = school
    api = server.api

    def refused(path: str, body, status: int, error: str) -> None:
        assert api.call("POST", API + path, body) == (status, {"error": error}), path

    refused("/groups/nope/kick", {"user": "stud"}, 404, "no such group: nope")
    refused("/groups/nope/settings", {"join": "invite"}, 404, "no such group: nope")
    refused("/groups/class/kick", {}, 400, "missing field 'user'")
    refused("/groups/class/kick", {"user": 5}, 400, "field 'user' must be a string")
    refused("/groups/class/kick", {"user": "a b"}, 400, "invalid user name: 'a b'")
    refused("/groups/class/kick", {"user": "ghost"}, 400, "ghost is not a member of class")
    refused("/groups/class/kick", {"user": "ta"}, 400, "ta is not a member of class")
    refused("/groups/class/mod", {"user": "ghost"}, 400, "not allowed: ghost has no account")
    refused("/groups/class/invite", {"user": "ghost"}, 400, "not allowed: ghost has no account")
    for minutes in ("0", "10081", "ab", 0, 10081):
        refused("/groups/class/mute", {"user": "stud", "minutes": minutes}, 400,
                f"invalid minutes: {minutes}")
    refused("/groups/class/mute", {"user": "stud", "minutes": 1.5}, 400,
            "field 'minutes' must be a number (1 to 10080)")
    refused("/groups/class/kick", {"user": "stud", "minutes": 3}, 400,
            "field 'minutes' is for mute only")
    refused("/groups/class/mute", {"user": "stud", "reason": "x"}, 400,
            "field 'reason' is for kick and ban only")
    refused("/groups/class/kick", {"user": "stud", "reason": "a\x1bb"}, 400,
            "control characters are not allowed")
    refused("/groups/class/settings", {"color": "red"}, 400, "invalid setting: color")
    refused("/groups/class/settings", {"join": "closed"}, 400, "invalid value for join: closed")
    refused("/groups/class/settings", {"post": "all", "join": 1}, 400,
            "invalid value for join: 1")
    refused("/groups/class/settings", {}, 400,
            "no setting to change (keys: join, post, history, visibility)")
    assert api.call("POST", API + "/groups/class/promote", {"user": "stud"})[0] == 404
    assert api.call("GET", API + "/groups/class/kick")[0] == 405
    # Nothing of that changed anything or reached the audit (the settings were checked
    # all before any was made: `post all` of the mixed request is not there).
    assert audit(api, "?group=class") == []
    stud.send("public class still here")
    until(teach, "[public group class from stud] still here")
    for bad in ("?limit=0", "?limit=1001", "?limit=x", "?limit=-1"):
        status, body = api.call("GET", API + "/audit" + bad)
        assert (status, body) == (400, {"error": "limit must be 1 to 1000"})


def test_admin_powers_on_general_and_a_guest_group(make_http_server, connect):
    server = make_http_server(rate_limit=0, admin_token=TOKEN)
    api = server.api
    alice, bob = (enter(server, connect, n) for n in ("alice", "bob"))
    assert ask(alice, "create lobby") == "ok: created group lobby"
    assert ask(alice, "join lobby") == "ok: joined group lobby"
    assert ask(alice, "info lobby").startswith("info: lobby owner - ")
    # a guest has no powers in its own group ...
    assert ask(alice, "set lobby join invite") == \
        "error: not allowed: only the owner of lobby can do that"
    # ... an administrator has the owner's, there and in General
    assert api.ok("POST", API + "/groups/lobby/kick", {"user": "alice"})["reply"] == \
        "ok: removed alice from lobby"
    until(alice, "* admin removed you from lobby")
    assert api.ok("POST", API + "/groups/General/mute", {"user": "bob"})["reply"] == \
        "ok: muted bob in General"
    until(bob, "* admin muted you in General")
    assert ask(bob, "public General hi") == "error: not allowed: you are muted in General"
    answer = api.ok("POST", API + "/groups/general/settings", {"post": "moderators"})
    assert answer["group"]["settings"]["post"] == "moderators"
    assert answer["group"]["owner"] is None
    assert ask(alice, "public General hi") == \
        "error: not allowed: only moderators can post in General"
    view = api.ok("GET", API + "/groups/lobby")
    assert view["owner"] is None and view["members"] == []
    assert short(audit(api, "?limit=2")) == [
        ("admin", "set", "General", None, "post moderators"),
        ("admin", "mute", "General", "bob", None),
    ]
    # deleting a group is recorded too
    assert api.call("DELETE", API + "/groups/lobby")[0] == 204
    assert short(audit(api, "?limit=1")) == [("admin", "group.delete", "lobby", None, None)]


def test_audit_of_users_and_account_changes(school):
    server, teach, ta, stud = school
    api = server.api
    assert ask(teach, "mod class ta") == "ok: ta is a moderator of class"
    ta.send("mute class stud 10")
    until(ta, "ok: muted stud in class for 10 minutes")
    ta.send("kick class stud chatting")
    until(ta, "ok: removed stud from class")
    assert ask(teach, "create other") == "ok: created group other"
    assert ask(teach, "set other history joined") == "ok: set history joined in other"
    api.ok("POST", API + "/accounts/stud/password", {"password": "another-pw-2"})
    api.ok("POST", API + "/accounts/stud/suspend", {})
    api.ok("POST", API + "/accounts/stud/unsuspend", {})
    api.ok("POST", API + "/accounts", {"name": "extra"})
    assert api.call("DELETE", API + "/accounts/extra")[0] == 204
    entries = audit(api)
    assert short(entries) == [
        ("admin", "account.delete", None, "extra", None),
        ("admin", "account.create", None, "extra", None),
        ("admin", "account.unsuspend", None, "stud", None),
        ("admin", "account.suspend", None, "stud", None),
        ("admin", "account.password", None, "stud", None),
        ("teach", "set", "other", None, "history joined"),
        ("ta", "kick", "class", "stud", "chatting"),
        ("ta", "mute", "class", "stud", "10"),
        ("teach", "mod", "class", "ta", None),
        ("admin", "account.create", None, "stud", None),
        ("admin", "account.create", None, "ta", None),
        ("admin", "account.create", None, "teach", None),
    ]
    assert all(e["at"].endswith("Z") for e in entries)
    assert short(audit(api, "?limit=2&group=CLASS")) == [
        ("ta", "kick", "class", "stud", "chatting"), ("ta", "mute", "class", "stud", "10")]
    assert audit(api, "?group=nothing") == []
    # no password anywhere in it
    assert "another-pw-2" not in str(entries) and "password-1" not in str(entries)


def test_owner_account_deleted_group_keeps_working(school, connect):
    server, teach, ta, stud = school
    api = server.api
    assert ask(teach, "mod class ta") == "ok: ta is a moderator of class"
    assert api.call("DELETE", API + "/accounts/teach")[0] == 204
    assert teach.closed()
    # the moderator still moderates, members still talk, the admin still rules
    ta.send("join class")
    until(ta, "ok: joined group class")
    ta.send("mute class stud")
    until(ta, "ok: muted stud in class")
    assert api.ok("POST", API + "/groups/class/unmute", {"user": "stud"})["reply"] == \
        "ok: unmuted stud in class"
    stud.send("public class hello")
    until(ta, "[public group class from stud] hello")
    # The owner is still the old account's key: nobody else gets its powers (a guest
    # named teach is not the owner).
    guest = enter(server, connect, "teach")
    assert ask(guest, "set class join invite") == \
        "error: not allowed: only the owner of class can do that"
    assert api.ok("GET", API + "/groups/class")["owner"] == "teach"
    ta.sync()


def _schema_3_database(path) -> None:
    """A data directory as chatsrv with schema 3 left it: a group with roles, an account."""
    path.mkdir(parents=True)
    db = sqlite3.connect(path / S.DB_NAME, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (3)")
    for migration in S.MIGRATIONS[:3]:
        for statement in migration.split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute("INSERT INTO groups (name, created_by, created_at) VALUES ('General', '', 0)")
    db.execute("INSERT INTO groups (name, created_by, created_at) VALUES ('old', 'teach', 1)")
    db.execute("INSERT INTO group_roles (group_id, data) VALUES (2, ?)",
               ('{"owner": "teach", "mods": {}, "invited": {}, "banned": {}, "muted": {}, '
                '"settings": ["open", "all", "shared", "public"]}',))
    account = Account("teach", passwords.hash_password("teach-password-1"), time.time())
    db.execute("INSERT INTO accounts (key, name, phc, created_at) VALUES (?, ?, ?, ?)",
               (account.key, account.name, account.phc, account.created_at))
    db.close()


def test_audit_survives_restart_after_migration_from_schema_3(tmp_path, make_http_server,
                                                               connect):
    _schema_3_database(tmp_path / "data")
    server = make_http_server(rate_limit=0, accounts="optional", admin_token=TOKEN)
    teach = enter(server, connect, "teach", "teach-password-1")
    assert ask(teach, "set old post moderators") == "ok: set post moderators in old"
    server.api.ok("POST", API + "/groups/old/ban", {"user": "eve", "reason": "spam"})
    assert server.stop(signal.SIGTERM) == 0
    db = sqlite3.connect(tmp_path / "data" / S.DB_NAME)
    assert S.read_version(db) == 4
    db.close()
    again = make_http_server(rate_limit=0, accounts="optional", admin_token=TOKEN)
    assert short(audit(again.api)) == [
        ("admin", "ban", "old", "eve", "spam"),
        ("teach", "set", "old", None, "post moderators"),
    ]
    assert again.api.ok("GET", API + "/groups/old")["bans"] == ["eve"]


def test_audit_without_a_durable_store(make_http_server, connect):
    server = make_http_server(rate_limit=0, admin_token=TOKEN, store="memory")
    alice = enter(server, connect, "alice")
    server.api.ok("POST", API + "/groups/General/mute", {"user": "alice", "minutes": 1})
    until(alice, "* admin muted you in General for 1 minutes")
    wait_for(lambda: audit(server.api), "the audit entry")
    assert short(audit(server.api)) == [("admin", "mute", "General", "alice", "1")]


def test_admin_cli_group_and_audit(school):
    server, teach, ta, stud = school
    from chatsrv_admin.cli import app
    from typer.testing import CliRunner

    runner = CliRunner()
    env = {"CHATSRV_ADMIN_TOKEN": TOKEN, "COLUMNS": "200"}

    def admin(*args: str):
        return runner.invoke(app, ["--url", server.http_url, *args], env=env)

    result = admin("group", "mod", "class", "ta")
    assert result.exit_code == 0 and result.output.strip() == "ok: ta is a moderator of class"
    until(ta, "* admin made you a moderator of class")
    result = admin("group", "mute", "class", "stud", "--minutes", "3")
    assert result.output.strip() == "ok: muted stud in class for 3 minutes"
    result = admin("group", "kick", "class", "stud", "--reason", "off topic")
    assert result.output.strip() == "ok: removed stud from class"
    until(stud, "* admin removed you from class: off topic")
    result = admin("group", "set", "class", "join", "invite", "post", "moderators")
    assert result.output.splitlines() == ["ok: set join invite in class",
                                          "ok: set post moderators in class"]
    assert admin("group", "set", "class", "join").exit_code == 2
    result = admin("group", "ban", "class", "eve")
    assert result.exit_code == 0
    result = admin("group", "mute", "class", "stud", "--minutes", "0")
    assert result.exit_code == 1 and "invalid minutes: 0 (HTTP 400)" in result.output
    result = admin("group", "class")
    assert result.exit_code == 0, result.output
    out = result.output
    for want in ("group class: 1 member", "owner", "teach", "moderators", "ta",
                 "join invite post moderators history shared visibility public",
                 "banned", "eve", "stud (until ", "members"):
        assert want in out, (want, out)
    view = json.loads(admin("group", "class", "--json").output)
    assert view["bans"] == ["eve"] and view["settings"]["post"] == "moderators"
    result = admin("audit", "--limit", "2")
    assert result.exit_code == 0 and "2 audit entries" in result.output
    assert "ban" in result.output and "post moderators" in result.output
    entries = json.loads(admin("--json", "audit", "--group", "class").output)["entries"]
    assert [e["action"] for e in entries] == ["ban", "set", "set", "kick", "mute", "mod"]
    assert entries[3]["detail"] == "off topic" and entries[3]["actor"] == "admin"
    result = admin("group", "delete", "class")
    assert result.exit_code == 0 and "deleted group class" in result.output
    until(teach, "* group class was deleted by an administrator")
    result = admin("group", "nope")
    assert result.exit_code == 1 and "no such group: nope (HTTP 404)" in result.output


def test_acknowledged_changes_keep_their_audit_entry_through_kill_9(school, make_http_server):
    server, teach, ta, stud = school
    assert ask(teach, "set class post moderators") == "ok: set post moderators in class"
    assert ask(teach, "kick class stud out") == "ok: removed stud from class"  # stored too
    server.api.ok("POST", API + "/groups/class/ban", {"user": "stud"})  # answered: stored
    server.stop(signal.SIGKILL)
    again = make_http_server(rate_limit=0, accounts="optional", admin_token=TOKEN)
    assert short(audit(again.api, "?group=class")) == [
        ("admin", "ban", "class", "stud", None),
        ("teach", "kick", "class", "stud", "out"),
        ("teach", "set", "class", None, "post moderators"),
    ]

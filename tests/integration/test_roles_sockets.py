"""Group roles and moderation over real sockets (PROTOCOL.md v2, "Group roles
and moderation"): the classroom flow on one node. Every rule and error line is
covered without sockets in tests/unit/test_moderation.py."""

from __future__ import annotations

import signal
import time

import pytest

from chatsrv import passwords
from chatsrv.core.accounts import Account
from chatsrv.store.sqlite import SqliteStore


def seed(tmp_path, *names: str) -> None:
    store = SqliteStore(tmp_path / "data")
    store.load(10)
    for name in names:
        store.add_account(Account(name, passwords.hash_password(f"{name}-password"), time.time()))
    store.close()


@pytest.fixture
def school(tmp_path, make_server, connect):
    seed(tmp_path, "teach", "ta", "stud")
    server = make_server(rate_limit=0, accounts="optional")

    def enter(name: str):
        client = connect(server)
        client.expect("enter a username:")
        client.send(name if name == "eve" else f"{name} {name}-password")
        client.expect(f"connected! welcome {name}", "you joined the group General")
        return client

    return server, enter


def until(client, line: str) -> list[str]:
    return client.read_until(lambda got: got == line)


def test_classroom_flow(school):
    server, enter = school
    teach, ta, stud, eve = (enter(n) for n in ("teach", "ta", "stud", "eve"))
    teach.send("create class")
    until(teach, "ok: created group class")
    teach.send("set class join invite")
    until(teach, "ok: set join invite in class")
    teach.send("set class visibility private")
    until(teach, "ok: set visibility private in class")
    teach.send("mod class ta")
    until(teach, "ok: ta is a moderator of class")
    until(ta, "* teach made you a moderator of class")
    # an outsider sees nothing of it
    for line in ("join class", "info class", "history class"):
        eve.send(line)
        until(eve, "error: no such group: class")
    eve.send("groups")
    assert eve.read_until(lambda got: got.startswith("groups: "))[-1] == "groups: General"
    eve.send("create class")
    until(eve, "error: group already exists: class")
    stud.send("join class")
    until(stud, "error: no such group: class")
    ta.send("invite class stud")
    until(ta, "ok: invited stud to class")
    until(stud, "* ta invited you to class")
    for client in (teach, ta, stud):
        client.send("join class")
        until(client, "ok: joined group class")
    teach.send("info class")
    until(teach, "info: class owner teach moderators ta members 3 join invite post all "
                 "history shared visibility private")
    # announcement-only, then a mute and a kick
    teach.send("set class post moderators")
    until(teach, "ok: set post moderators in class")
    stud.send("public class may I?")
    until(stud, "error: not allowed: only moderators can post in class")
    ta.send("public class homework is due")
    until(stud, "[public group class from ta] homework is due")
    teach.send("set class post all")
    until(teach, "ok: set post all in class")
    ta.send("mute class stud 10")
    until(ta, "ok: muted stud in class for 10 minutes")
    until(stud, "* ta muted you in class for 10 minutes")
    stud.send("public class hello")
    until(stud, "error: not allowed: you are muted in class")
    ta.send("kick class teach")
    until(ta, "error: not allowed: teach is the owner of class")
    ta.send("kick class stud talking in class")
    until(ta, "ok: removed stud from class")
    until(stud, "* ta removed you from class: talking in class")
    until(teach, "* stud was removed from class by ta")
    stud.send("public class sorry")
    until(stud, "error: not a member of class")
    ta.send("ban class stud")
    until(ta, "ok: banned stud from class")
    stud.send("join class")
    until(stud, "error: not allowed: you are banned from class")
    stud.sync()
    assert server.stop() == 0


def test_roles_survive_a_restart_and_kill_9(school, make_server, connect):
    server, enter = school
    teach, ta, stud, eve = (enter(n) for n in ("teach", "ta", "stud", "eve"))
    teach.send("create class")
    until(teach, "ok: created group class")
    for line, reply in (("set class join invite", "ok: set join invite in class"),
                        ("set class visibility private", "ok: set visibility private in class"),
                        ("mod class ta", "ok: ta is a moderator of class"),
                        ("invite class stud", "ok: invited stud to class")):
        teach.send(line)
        until(teach, reply)
    stud.send("join class")
    until(stud, "ok: joined group class")
    ta.send("mute class stud")
    until(ta, "ok: muted stud in class")
    ta.send("ban class eve")
    until(ta, "ok: banned eve from class")  # acknowledged: stored
    server.stop(signal.SIGKILL)
    server = make_server(rate_limit=0, accounts="optional")
    stud, eve, ta = (login_as(server, connect, n) for n in ("stud", "eve", "ta"))
    stud.send("join class")
    until(stud, "ok: joined group class")  # still invited
    stud.send("public class am I heard?")
    until(stud, "error: not allowed: you are muted in class")
    eve.send("join class")
    until(eve, "error: no such group: class")  # still private
    ta.send("info class")
    until(ta, "info: class owner teach moderators ta members 1 join invite post all "
              "history shared visibility private")
    ta.send("unban class eve")
    until(ta, "ok: unbanned eve from class")


def login_as(server, connect, name: str):
    client = connect(server)
    client.expect("enter a username:")
    client.send(name if name == "eve" else f"{name} {name}-password")
    client.expect(f"connected! welcome {name}", "you joined the group General")
    return client

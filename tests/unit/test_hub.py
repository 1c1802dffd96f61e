"""The hub, driven directly: every command and every error, no sockets."""

from __future__ import annotations

import pytest
from hubkit import FakeClock, lines
from hypothesis import given
from hypothesis import strategies as st

from chatsrv.core.errors import LoginRefused
from chatsrv.core.hub import Hub


@pytest.fixture
def hub():
    return Hub(clock=FakeClock(), history=5, notice_limit=1000)


@pytest.fixture
def alice(hub):
    user = hub.login("alice")
    lines(user)
    return user


@pytest.fixture
def bob(hub, alice):
    user = hub.login("Bob")
    lines(user)
    lines(alice)
    return user


def test_login_welcomes_and_joins_general(hub, alice):
    carol = hub.login("carol")
    assert lines(carol) == ["connected! welcome carol", "you joined the group General"]
    assert lines(alice) == ["* carol joined the group General"]
    assert carol in hub.dirty and alice in hub.dirty


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("", "error: invalid username: empty"),
        ("   ", "error: invalid username: empty"),
        ("_x", "error: invalid username: must start with a letter or digit"),
        ("ALICE", "error: username taken: ALICE"),
    ],
)
def test_login_refusals(hub, alice, name, error):
    with pytest.raises(LoginRefused, match=f"^{error}$"):
        hub.login(name)


def test_create_join_public_leave(hub, alice, bob):
    hub.handle(alice, "create Dev")
    assert lines(alice) == ["ok: created group Dev"]
    hub.handle(alice, "join dev")
    assert lines(alice) == ["ok: joined group Dev"]
    hub.handle(bob, "JOIN DEV")
    assert lines(bob) == ["ok: joined group Dev"]
    assert lines(alice) == ["* Bob joined the group Dev"]
    hub.handle(alice, "public dev  hi  there ")
    assert lines(bob) == ["[public group Dev from alice] hi  there "]
    assert lines(alice) == []
    hub.handle(bob, "leave Dev")
    assert lines(bob) == ["ok: left group Dev"]
    assert lines(alice) == ["* Bob left the group Dev"]
    assert hub.stats.messages_public == 1 and hub.stats.deliveries_public == 1


def test_errors_in_table_order(hub, alice, bob):
    cases = [
        ("nosuch", "error: unknown command: nosuch"),
        ("join", "error: usage: join <group>"),
        ("create _bad", "error: invalid group name: must start with a letter or digit"),
        ("create general", "error: group already exists: General"),
        ("join nowhere", "error: no such group: nowhere"),
        ("join General", "error: already a member of General"),
        ("create Dev", "ok: created group Dev"),
        ("leave Dev", "error: not a member of Dev"),
        ("public Dev hi", "error: not a member of Dev"),
        ("public nowhere \x01", "error: no such group: nowhere"),
        ("public Dev \x01", "error: not a member of Dev"),
        ("private nobody \x01", "error: no such user: nobody"),
        ("private bob a\x7fb", "error: control characters are not allowed"),
        ("public General x\u0085", "error: control characters are not allowed"),
        ("history nowhere x", "error: no such group: nowhere"),
        ("history Dev x", "error: not a member of Dev"),
        ("history General 0", "error: invalid count: 0"),
        ("history General 201", "error: invalid count: 201"),
    ]
    for line, reply in cases:
        hub.handle(alice, line)
        assert lines(alice) == [reply], line
    assert lines(bob) == []


def test_private_including_to_self(hub, alice, bob):
    hub.handle(alice, "private BOB hello\tyou")
    assert lines(bob) == ["[private from alice] hello\tyou"]
    hub.handle(alice, "private alice me")
    assert lines(alice) == ["[private from alice] me"]


def test_groups_and_users_sorted_case_insensitively(hub, alice, bob):
    hub.handle(alice, "create zeta")
    hub.handle(alice, "create Alpha")
    lines(alice)
    hub.handle(alice, "groups")
    hub.handle(alice, "users")
    assert lines(alice) == ["groups: Alpha General zeta", "users: alice Bob"]


def test_history_ring_and_counts(hub, alice, bob):
    clock = hub.clock
    for i in range(8):
        clock.now += 1
        hub.handle(bob, f"public General m{i}")
    hub.handle(bob, "private alice not kept")
    lines(alice)
    hub.handle(alice, "history general 2")
    stamp = "2023-11-14T22:13:2{}Z"
    assert lines(alice) == [
        f"[history group General at {stamp.format(7)} from Bob] m6",
        f"[history group General at {stamp.format(8)} from Bob] m7",
        "ok: end of history General",
    ]
    hub.handle(alice, "history General")
    assert [line.rsplit(" ", 1)[-1] for line in lines(alice)] == [
        "m3", "m4", "m5", "m6", "m7", "General"
    ]


def test_history_disabled():
    hub = Hub(clock=FakeClock(), history=0)
    user = hub.login("a")
    lines(user)
    hub.handle(user, "history General")
    assert lines(user) == ["error: history is disabled"]


def test_exit_and_logout_notices(hub, alice, bob):
    hub.handle(alice, "create Dev")
    hub.handle(alice, "join Dev")
    hub.handle(bob, "join Dev")
    lines(alice)
    lines(bob)
    assert hub.handle(bob, "exit") is True
    assert lines(bob) == ["ok: bye"]
    hub.logout(bob)
    assert sorted(lines(alice)) == ["* Bob left the group Dev", "* Bob left the group General"]
    assert "bob" not in hub.users
    again = hub.login("bob")
    assert lines(again)[0] == "connected! welcome bob"


def test_notice_limit_counts_the_joiner_and_the_leaver():
    hub = Hub(clock=FakeClock(), notice_limit=3)
    a, b = hub.login("a"), hub.login("b")
    c = hub.login("c")  # 3 members counting c: notices sent
    assert lines(a)[-1] == "* c joined the group General"
    d = hub.login("d")  # 4 > 3: no notice
    assert "* d joined the group General" not in lines(a) + lines(b) + lines(c)
    assert lines(d) == ["connected! welcome d", "you joined the group General"]
    hub.logout(d)  # 4 members counting the leaver: no notice
    assert lines(a) == []
    hub.logout(c)  # 3 counting the leaver: notice
    assert lines(a) == ["* c left the group General"]


def test_help_ping_blank(hub, alice):
    assert hub.handle(alice, "  ") is False
    hub.handle(alice, "help")
    hub.handle(alice, "PING")
    assert lines(alice) == [
        "ok: commands: create join leave groups users public private exit history help ping register password token info set mod unmod invite uninvite kick ban unban mute unmute",
        "ok: pong",
    ]


def test_command_counters(hub, alice):
    for line in ["ping", "PING", "bogus", "join", "   "]:
        hub.handle(alice, line)
    counts = hub.stats.commands
    assert counts["ping"] == 2 and counts["unknown"] == 1 and counts["join"] == 1


def test_leaving_general_is_allowed(hub, alice):
    hub.handle(alice, "leave general")
    assert lines(alice) == ["ok: left group General"]
    hub.handle(alice, "public General x")
    assert lines(alice) == ["error: not a member of General"]


def test_announce(hub, alice, bob):
    assert hub.announce("maintenance at 5") == 2
    assert lines(alice) == lines(bob) == ["* announcement: maintenance at 5"]


@given(st.lists(st.tuples(st.sampled_from("jlp"), st.integers(0, 5)), max_size=60))
def test_public_reaches_exactly_the_members_whatever_the_join_leave_history(ops):
    # The group caches its members' queue appenders; joins append to the cache
    # and leaves rebuild it, so any sequence must leave it equal to the members.
    hub = Hub(clock=FakeClock(), history=5, notice_limit=1000)
    users = [hub.login(f"u{i}") for i in range(6)]
    hub.handle(users[0], "create g")
    members: set[int] = set()
    for op, i in ops:
        if op == "j":
            hub.handle(users[i], "join g")
            members.add(i)
        elif op == "l":
            hub.handle(users[i], "leave g")
            members.discard(i)
        for user in users:
            lines(user)
        if op == "p" and i in members:
            hub.handle(users[i], "public g hi")
            got = {j for j, user in enumerate(users) if lines(user) == [f"[public group g from u{i}] hi"]}
            assert got == members - {i}

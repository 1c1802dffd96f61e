"""The hub in cluster mode, driven directly: what it records for other nodes
(`outbox`) and how it applies what they published (`remote_*`), no Redis."""

from __future__ import annotations

import pytest

from chatsrv.core import events
from chatsrv.core.commits import JoinQuery
from chatsrv.core.errors import LoginRefused
from chatsrv.core.hub import Hub
from chatsrv.core.model import User


def lines(user: User) -> list[str]:
    out = b"".join(user.queue).decode().splitlines()
    user.queue.clear()
    return out


def kinds(hub: Hub) -> list[tuple]:
    """The outbox as (kind, names...) tuples, then forget it (like the publisher)."""
    out = []
    for item in hub.outbox:
        fields = item if isinstance(item, tuple) else [getattr(item, f) for f in item.__slots__]
        names = tuple(getattr(x, "name", x) for x in fields if not isinstance(x, bytes))
        out.append((type(item).__name__.lower(), *names))
    hub.outbox.clear()
    return out


@pytest.fixture
def hub():
    hub = Hub(clock=lambda: 1_700_000_000.0, history=5, notice_limit=3, durable=True)
    hub.join_cluster("n0")
    return hub


@pytest.fixture
def alice(hub):
    user = hub.login("alice", announced=True)
    lines(user)
    hub.outbox.clear()
    hub.join_confirmed(user.key, "general")
    return user


def test_local_actions_are_recorded_for_other_nodes(hub, alice):
    hub.remote_group("dev", "bob", 1.0)
    hub.remote_login("n1", "bob", 1.0)
    hub.remote_join("bob", "dev", "n1")
    hub.handle(alice, "join dev")
    assert lines(alice) == []  # not a first local member: see the next test
    hub.handle(alice, "public dev hi")
    hub.handle(alice, "leave dev")
    hub.logout(alice)
    assert kinds(hub) == [("join", "alice", "dev"), ("public", "dev", "alice", "hi"),
                          ("leave", "alice", "dev"), ("leave", "alice", "General"),
                          ("logout", "alice")]


def test_first_local_member_waits_for_the_channel(hub, alice):
    hub.remote_group("dev", "", 1.0)
    hub.handle(alice, "join dev")
    assert lines(alice) == []
    assert hub.commits.queries == [JoinQuery(alice, hub.groups["dev"])]


def test_remote_users_are_listed_and_reachable(hub, alice):
    hub.remote_login("n1", "Bob", 1.0, "10.0.0.2:5")
    hub.handle(alice, "users")
    assert lines(alice) == ["users: alice Bob"]
    hub.handle(alice, "private bob hello")
    [item] = hub.outbox
    assert isinstance(item, events.Private) and item.remote.node == "n1"
    assert item.data == b"[private from alice] hello\n"
    assert hub.stats.messages_private == 1 and hub.stats.deliveries_private == 0


def test_remote_name_is_left_to_redis(hub, alice):
    hub.remote_login("n1", "bob", 1.0)
    assert hub.check_name("BOB") == "BOB"  # Redis decides; the mirror may be stale
    with pytest.raises(LoginRefused, match="username taken: ALICE"):
        hub.check_name("ALICE")


def test_remote_join_and_leave_notify_local_members(hub, alice):
    hub.remote_login("n1", "bob", 1.0)
    hub.remote_join("bob", "general", "n1")
    assert lines(alice) == ["* bob joined the group General"]
    hub.remote_public("general", b"[public group General from bob] yo\n")
    assert lines(alice) == ["[public group General from bob] yo"]
    assert hub.stats.deliveries_public == 1
    hub.remote_leave("bob", "general", "n1")
    assert lines(alice) == ["* bob left the group General"]
    assert hub.groups["general"].remote == {}


def test_a_member_whose_join_is_not_back_yet_hears_no_earlier_join(hub, alice):
    hub.remote_group("dev", "", 1.0)
    hub.handle(alice, "join dev")
    hub.join_confirmed(alice.key, "dev")
    carol = hub.login("carol", announced=True)
    hub.handle(carol, "join dev")  # its event is not back from Redis yet
    lines(alice)
    lines(carol)
    hub.remote_login("n1", "bob", 1.0)
    hub.remote_join("bob", "dev", "n1")  # so Redis ordered it before carol's join
    assert lines(alice) == ["* bob joined the group dev"]
    assert lines(carol) == []
    hub.join_confirmed(carol.key, "dev")
    hub.remote_leave("bob", "dev", "n1")
    assert lines(carol) == ["* bob left the group dev"]


def test_notice_limit_counts_members_of_every_node(hub, alice):
    for name in ("b1", "b2"):
        hub.remote_login("n1", name, 1.0)
        hub.remote_join(name, "general", "n1")
    lines(alice)
    assert hub.groups["general"].size() == 3
    hub.remote_login("n1", "b3", 1.0)
    hub.remote_join("b3", "general", "n1")  # 4 members > --notice-limit 3
    assert lines(alice) == []


def test_a_dead_node_s_users_leave_with_notices(hub, alice):
    hub.remote_login("n1", "bob", 1.0)
    hub.remote_join("bob", "general", "n1")
    hub.remote_login("n2", "carol", 1.0)
    lines(alice)
    assert hub.node_gone("n1") == ["bob"]
    assert lines(alice) == ["* bob left the group General"]
    assert list(hub.remote_users) == ["carol"]


def test_node_state_replaces_silently(hub, alice):
    hub.remote_login("n1", "old", 1.0)
    hub.node_state("n1", [["new", 2.0, "p", ["general"]]])
    assert list(hub.remote_users) == ["new"]
    assert hub.groups["general"].remote == {"new": "new"}
    assert lines(alice) == []


def test_unavailable_cluster_refuses_what_needs_it(hub, alice):
    hub.remote_login("n1", "bob", 1.0)
    hub.unavailable = True
    for command in ("users", "groups", "create x", "history General", "private bob hi"):
        hub.handle(alice, command)
        assert lines(alice) == ["error: cluster unavailable"], command
    hub.handle(alice, "public General still local")  # local chat goes on
    hub.handle(alice, "ping")
    assert lines(alice) == ["ok: pong"]

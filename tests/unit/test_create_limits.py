"""Group limits in pure code: the create-rate bucket, `--max-groups`, the cached
`groups` reply and deletion, driven through the hub with fake clocks."""

from __future__ import annotations

from hubkit import FakeClock as Clock
from hubkit import lines

from chatsrv.core import events
from chatsrv.core.createrate import CreateRate
from chatsrv.core.hub import Hub
from chatsrv.core.limits import address_key
from chatsrv.core.model import User

# ---------------------------------------------------------------- the bucket


def test_bucket_allows_the_burst_then_the_rate():
    clock = Clock()
    rate = CreateRate(10, clock)  # 10 a minute, burst 20
    assert [rate.take("10.0.0.1") for _ in range(21)] == [True] * 20 + [False]
    assert rate.take("10.0.0.2")  # another address has its own bucket
    clock.now += 5.9
    assert not rate.take("10.0.0.1")  # under one token back
    clock.now += 0.2
    assert rate.take("10.0.0.1")  # one every 6 s
    assert not rate.take("10.0.0.1")
    clock.now += 120
    assert [rate.take("10.0.0.1") for _ in range(21)] == [True] * 20 + [False]


def test_refused_takes_do_not_drain_and_refund_gives_back():
    clock = Clock()
    rate = CreateRate(60, clock, burst=2)
    assert rate.take("a") and rate.take("a")
    for _ in range(50):
        assert not rate.take("a")
    clock.now += 1.0  # a refusal spent nothing: one second is one token
    assert rate.take("a")
    rate.refund("a")
    assert rate.take("a")
    assert not rate.take("a")


def test_entries_are_bounded_and_full_buckets_purged_first():
    clock = Clock()
    rate = CreateRate(60, clock, burst=2, max_entries=100)
    for i in range(100):
        rate.take(f"old{i}")
    clock.now += 10  # every old bucket is full again: equivalent to no entry
    rate.take("busy")
    assert set(rate.entries) == {"busy"}
    for i in range(500):
        rate.take(f"new{i}")  # nobody refills: the least recently used go
        assert len(rate.entries) <= 100
    assert "new499" in rate.entries and "busy" not in rate.entries


def test_address_key_counts_an_ipv6_64_as_one_and_ignores_exemptions():
    assert address_key("127.0.0.1") == "127.0.0.1"
    assert address_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert address_key("2001:db8:1:2::5") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::5") != address_key("2001:db8:1:3::5")
    assert address_key("not-an-ip") == "not-an-ip"


# ---------------------------------------------------------------- the hub


def make_hub(max_groups=10000, per_minute=0.0, clock=None, durable=False) -> Hub:
    limiter = CreateRate(per_minute, clock or Clock()) if per_minute else None
    return Hub(clock=lambda: 1_700_000_000.0, history=5, max_groups=max_groups,
               create_rate=limiter, durable=durable)


def login(hub: Hub, name: str, addr: str | None = "10.0.0.1") -> User:
    user = hub.login(name, addr=addr)
    lines(user)
    return user


def test_max_groups_counts_general_and_reserved():
    hub = make_hub(max_groups=3, durable=True)
    alice = login(hub, "alice")
    hub.handle(alice, "create a")
    hub.commits.uncommitted.clear()  # still awaiting its commit: reserved, and it counts
    hub.handle(alice, "create b")
    assert lines(alice) == []
    hub.handle(alice, "create c")
    assert lines(alice) == ["error: too many groups (max 3)"]
    hub.group_committed(hub.commits.reserved["a"], alice)
    assert lines(alice) == ["ok: created group a"]
    hub.handle(alice, "create c")
    assert lines(alice) == ["error: too many groups (max 3)"]


def test_max_groups_counts_other_nodes_groups():
    hub = make_hub(max_groups=3)
    hub.join_cluster("n0")
    alice = login(hub, "alice")
    hub.remote_group("x", "bob", 1.0)
    hub.remote_group("y", "bob", 1.0)
    hub.handle(alice, "create z")
    assert lines(alice) == ["error: too many groups (max 3)"]


def test_error_order_usage_name_exists_max_then_rate():
    clock = Clock()
    hub = make_hub(max_groups=3, per_minute=1, clock=clock)  # burst 2
    alice = login(hub, "alice")
    for line, want in [
        ("create", "error: usage: create <group>"),
        ("create _x", "error: invalid group name: must start with a letter or digit"),
        ("create general", "error: group already exists: General"),
        ("create one", "ok: created group one"),
        ("create two", "ok: created group two"),
        ("create three", "error: too many groups (max 3)"),  # before the rate
    ]:
        hub.handle(alice, line)
        assert lines(alice) == [want], line
    hub.max_groups = 10
    hub.handle(alice, "create three")
    assert lines(alice) == ["error: creating groups too fast, try again later"]
    hub.handle(alice, "create one")  # exists comes before the rate
    assert lines(alice) == ["error: group already exists: one"]


def test_rate_is_per_address_not_per_session_and_failures_cost_nothing():
    clock = Clock()
    hub = make_hub(per_minute=1, clock=clock)  # burst 2
    alice = login(hub, "alice", addr="10.0.0.1")
    for bad in ("create _x", "create General", "create _y"):
        hub.handle(alice, bad)
    lines(alice)
    hub.handle(alice, "create a")
    hub.logout(alice)
    again = login(hub, "alice", addr="10.0.0.1")  # a reconnect: same bucket
    hub.handle(again, "create b")
    hub.handle(again, "create c")
    assert lines(again) == ["ok: created group b",
                            "error: creating groups too fast, try again later"]
    other = login(hub, "carol", addr="10.0.0.2")
    hub.handle(other, "create c")
    assert lines(other) == ["ok: created group c"]
    internal = login(hub, "bot", addr=None)  # no address: not limited
    for i in range(5):
        hub.handle(internal, f"create bot{i}")
    assert lines(internal) == [f"ok: created group bot{i}" for i in range(5)]


def test_a_create_the_store_refuses_gives_its_token_back():
    hub = make_hub(per_minute=1, durable=True)  # burst 2
    alice = login(hub, "alice")
    hub.handle(alice, "create a")
    (creator, group), = hub.commits.uncommitted
    hub.commits.uncommitted.clear()
    hub.commits.not_committed(group, creator)
    assert lines(alice) == ["error: group not created, storage failed: a"]
    for name in ("a", "b"):
        hub.handle(alice, f"create {name}")
        (creator, group), = hub.commits.uncommitted
        hub.commits.uncommitted.clear()
        hub.group_committed(group, creator)
    assert lines(alice) == ["ok: created group a", "ok: created group b"]


# ---------------------------------------------------------------- cached listing


def test_groups_reply_is_one_bytes_object_until_the_set_changes():
    hub = make_hub()
    alice, bob = login(hub, "alice"), login(hub, "bob")
    lines(alice)
    hub.handle(alice, "groups")
    hub.handle(bob, "groups")
    assert alice.queue[0] is bob.queue[0]
    assert lines(alice) == ["groups: General"]
    lines(bob)
    changes = [
        lambda: hub.handle(alice, "create Zed"),
        lambda: hub.remote_group("apple", "x", 1.0),
        lambda: hub.restore_group("Mid", "", 1.0, []),
        lambda: hub.remove_group(hub.groups["zed"]),
    ]
    expected = ["groups: General Zed", "groups: apple General Zed",
                "groups: apple General Mid Zed", "groups: apple General Mid"]
    for change, want in zip(changes, expected, strict=True):
        change()
        lines(alice)
        hub.handle(alice, "groups")
        assert lines(alice) == [want]


def test_groups_cache_sees_commits_and_put_backs():
    hub = make_hub(durable=True)
    alice = login(hub, "alice")
    hub.handle(alice, "groups")
    hub.handle(alice, "create dev")
    (creator, group), = hub.commits.uncommitted
    hub.commits.uncommitted.clear()
    hub.handle(alice, "groups")  # not visible before its commit
    hub.group_committed(group, creator)
    hub.handle(alice, "groups")
    hub.remove_group(group)
    hub.put_back_group(group)
    hub.handle(alice, "groups")
    assert lines(alice) == ["groups: General", "groups: General", "ok: created group dev",
                            "groups: dev General", "groups: dev General"]


# ---------------------------------------------------------------- deletion


def test_remove_group_tells_members_without_leave_notices():
    hub = make_hub()
    alice, bob, carol = login(hub, "alice"), login(hub, "bob"), login(hub, "carol")
    for user in (alice, bob, carol):
        lines(user)
    hub.handle(alice, "create Dev")
    hub.handle(alice, "join Dev")
    hub.handle(bob, "join dev")
    hub.handle(bob, "public dev hello")
    for user in (alice, bob, carol):
        lines(user)
    group = hub.groups["dev"]
    hub.remove_group(group)
    assert lines(alice) == ["* group Dev was deleted by an administrator"]
    assert lines(bob) == ["* group Dev was deleted by an administrator"]
    assert lines(carol) == []
    assert "dev" not in hub.groups and "dev" not in alice.groups and not group.members
    hub.handle(bob, "public dev hi")
    assert lines(bob) == ["error: no such group: dev"]
    hub.handle(alice, "create dev")
    hub.handle(alice, "join dev")
    assert lines(alice) == ["ok: created group dev", "ok: joined group dev"]
    hub.handle(alice, "history dev")  # the new group has none of the old history
    assert lines(alice) == ["ok: end of history dev"]


def test_remove_group_forgets_unsaved_history_and_remote_members():
    hub = make_hub(durable=True)
    alice = login(hub, "alice")
    group = hub.add_group("dev", "")
    hub.handle(alice, "join dev")
    hub.handle(alice, "public dev one")
    assert hub.journal == [group]
    hub.remove_group(group)
    assert hub.journal == [] and hub.take_unsaved() == []
    hub.join_cluster("n0")
    remote_group = hub.add_group("ops", "")
    hub.remote_login("n1", "bob", 1.0)
    hub.remote_join("bob", "ops", "n1")
    hub.remote_group_deleted("ops")
    assert hub.remote_users["bob"].groups == set() and not remote_group.remote
    assert events.Unfollow(remote_group) in hub.outbox

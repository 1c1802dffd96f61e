"""Group roles and moderation (PROTOCOL.md v2), every rule and error line,
driven through Hub.handle with a fake clock (no sockets)."""

from __future__ import annotations

import re

import pytest
from hubkit import Chat, FakeClock

from chatsrv.core import moderation as M
from chatsrv.core.accounts import Account, AccountBook
from chatsrv.core.hub import Hub
from chatsrv.core.model import Group

ACCOUNTS = ("Owner", "Mo", "Mia", "Ann", "Ben")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hub(clock: FakeClock) -> Hub:
    book = AccountBook("optional", bytes(32), 86400.0,
                       [Account(name, "$argon2id$dummy", 0.0) for name in ACCOUNTS])
    return Hub(clock=clock, history=100, accounts=book)


GENERAL_NOTICE = re.compile(r"\* \S+ (joined|left) the group General")


def got(c: Chat) -> list[str]:
    """What `c` received since the last look, without General's join/leave notices."""
    c._take()
    out = [line for line in c.pending if not GENERAL_NOTICE.fullmatch(line)]
    c.pending.clear()
    return out


def ask(c: Chat, line: str) -> str:
    """Send `line` after draining; the first line received in answer."""
    got(c)
    c.send(line)
    answer = got(c)
    assert answer, f"{c.name}: no answer to {line!r}"
    return answer[0]


def chat(hub: Hub, name: str) -> Chat:
    c = Chat(hub, name)
    if name in ACCOUNTS:
        c.user.account = c.user.key
    return c


@pytest.fixture
def room(hub: Hub) -> tuple[Chat, Chat, Chat, Chat]:
    """`class` owned by Owner, Mo a moderator, Ann (account) and gus (guest) members."""
    owner, mo, ann, gus = (chat(hub, n) for n in ("Owner", "Mo", "Ann", "gus"))
    owner.send("create class")
    assert got(owner) == ["ok: created group class"]
    owner.send("mod class mo")
    assert got(owner) == ["ok: Mo is a moderator of class"]
    assert got(mo) == ["* Owner made you a moderator of class"]
    for c in (owner, mo, ann, gus):
        c.send("join class")
        c.read_until(lambda line: line == "ok: joined group class")
    for c in (owner, mo, ann, gus):
        c.user.queue.clear()
        c.pending.clear()
    return owner, mo, ann, gus


def test_info_and_owner(hub, room):
    owner, mo, ann, gus = room
    assert ask(gus, "info class") == (
        "info: class owner Owner moderators Mo members 4 join open post all history shared"
        " visibility public")
    assert ask(gus, "info general") == (
        "info: General owner - moderators - members 4 join open post all history shared"
        " visibility public")
    gus.send("create guests")
    assert got(gus) == ["ok: created group guests"]
    assert ask(gus, "info guests").startswith("info: guests owner - ")
    assert ask(gus, "info nope") == "error: no such group: nope"
    assert ask(gus, "info") == "error: usage: info <group>"


def test_set_every_key_and_errors(hub, room):
    owner, mo, ann, gus = room
    for key, value in (("join", "invite"), ("post", "moderators"), ("history", "joined"),
                       ("visibility", "private"), ("visibility", "public"), ("join", "open")):
        assert ask(owner, f"set class {key} {value}") == f"ok: set {key} {value} in class"
    assert ask(ann, "info class").endswith(
        "join open post moderators history joined visibility public")
    assert ask(mo, "set class join invite") == (
        "error: not allowed: only the owner of class can do that")
    assert ask(gus, "set class color red") == (
        "error: not allowed: only the owner of class can do that")
    assert ask(owner, "set class color red") == "error: invalid setting: color"
    assert ask(owner, "set class join closed") == "error: invalid value for join: closed"
    assert ask(owner, "set class join") == "error: usage: set <group> <key> <value>"
    assert ask(owner, "set general post moderators") == (
        "error: not allowed: only the owner of General can do that")


def test_mod_unmod_owner_only_and_accounts_only(hub, room):
    owner, mo, ann, gus = room
    assert ask(mo, "mod class ann") == "error: not allowed: only the owner of class can do that"
    assert ask(ann, "unmod class mo") == (
        "error: not allowed: only the owner of class can do that")
    assert ask(owner, "mod class gus") == "error: not allowed: gus has no account"
    assert ask(owner, "mod class nobody") == "error: not allowed: nobody has no account"
    assert ask(owner, "mod class mia") == "ok: Mia is a moderator of class"  # offline account
    assert ask(owner, "unmod class mia") == "ok: Mia is not a moderator of class"
    assert ask(owner, "unmod class mo") == "ok: Mo is not a moderator of class"
    assert ask(mo, "kick class ann") == (
        "error: not allowed: only the owner or a moderator of class can do that")


def test_member_tries_every_moderation_command(hub, room):
    owner, mo, ann, gus = room
    deny = "error: not allowed: only the owner or a moderator of class can do that"
    for line in ("invite class mia", "uninvite class mia", "kick class gus", "ban class gus",
                 "unban class gus", "mute class gus", "unmute class gus", "kick class gus why"):
        assert ask(ann, line) == deny
        assert ask(gus, line) == deny
    assert "gus" in hub.groups["class"].members


def test_moderator_cannot_act_on_owner_or_moderator(hub, room):
    owner, mo, ann, gus = room
    assert ask(owner, "mod class ann") == "ok: Ann is a moderator of class"
    for word in ("kick", "ban", "unban", "mute", "unmute", "invite", "uninvite"):
        assert ask(mo, f"{word} class owner") == (
            "error: not allowed: Owner is the owner of class")
        assert ask(mo, f"{word} class ANN") == "error: not allowed: Ann is a moderator of class"
    assert ask(owner, "kick class ann") == "ok: removed Ann from class"


def test_kick_with_reason_and_notices(hub, room):
    owner, mo, ann, gus = room
    assert ask(mo, "kick class gus  spamming  again ") == "ok: removed gus from class"
    assert got(gus) == ["* Mo removed you from class: spamming  again "]  # verbatim after the separators
    assert got(owner) == ["* gus was removed from class by Mo"]
    assert got(ann) == ["* gus was removed from class by Mo"]
    assert mo.user.queue == []
    assert ask(gus, "public class hi") == "error: not a member of class"
    assert ask(mo, "kick class gus") == "error: gus is not a member of class"
    assert ask(mo, "kick class ghost") == "error: ghost is not a member of class"
    assert ask(mo, "kick class") == "error: usage: kick <group> <user> [reason]"
    assert ask(gus, "join class") == "ok: joined group class"  # a kick is no ban
    assert ask(mo, "kick class gus") == "ok: removed gus from class"
    assert got(gus) == ["* Mo removed you from class"]


def test_ban_removes_refuses_join_until_unban(hub, room):
    owner, mo, ann, gus = room
    assert ask(mo, "ban class gus flooding") == "ok: banned gus from class"
    assert got(gus) == ["* Mo removed you from class: flooding"]
    assert got(ann) == ["* gus was removed from class by Mo"]
    assert ask(gus, "join class") == "error: not allowed: you are banned from class"
    assert ask(mo, "ban class ghost") == "ok: banned ghost from class"  # offline, any name
    ghost = chat(hub, "ghost")
    assert ask(ghost, "join class") == "error: not allowed: you are banned from class"
    assert ask(mo, "unban class gus") == "ok: unbanned gus from class"
    assert ask(gus, "join class") == "ok: joined group class"


def test_invite_only(hub, room, clock):
    owner, mo, ann, gus = room
    assert ask(owner, "set class join invite") == "ok: set join invite in class"
    mia, ben = chat(hub, "Mia"), chat(hub, "Ben")
    assert ask(mia, "join class") == "error: not allowed: class is invite-only"
    assert ask(mo, "invite class mia") == "ok: invited Mia to class"
    assert got(mia) == ["* Mo invited you to class"]
    assert ask(mo, "invite class gus2") == "error: not allowed: gus2 has no account"
    assert ask(mia, "join class") == "ok: joined group class"
    assert ask(mo, "invite class ben") == "ok: invited Ben to class"
    assert got(ben) == ["* Mo invited you to class"]
    assert ask(mo, "uninvite class ben") == "ok: uninvited Ben from class"
    assert ask(ben, "join class") == "error: not allowed: class is invite-only"
    # the owner and moderators join without an invitation; a ban still wins
    assert ask(mo, "leave class") == "ok: left group class"
    assert ask(mo, "join class") == "ok: joined group class"
    assert ask(owner, "invite class ben") == "ok: invited Ben to class"
    assert ask(owner, "ban class ben") == "ok: banned Ben from class"
    assert ask(ben, "join class") == "error: not allowed: you are banned from class"


def test_post_moderators(hub, room):
    owner, mo, ann, gus = room
    assert ask(owner, "set class post moderators") == "ok: set post moderators in class"
    assert ask(ann, "public class hello") == (
        "error: not allowed: only moderators can post in class")
    mo.send("public class announcement")
    assert got(ann) == ["[public group class from Mo] announcement"]
    owner.send("public class from the top")
    assert got(gus) == ["[public group class from Mo] announcement",
               "[public group class from Owner] from the top"]


def test_mutes_timed_and_unmute(hub, room, clock):
    owner, mo, ann, gus = room
    assert ask(mo, "mute class gus 5") == "ok: muted gus in class for 5 minutes"
    assert got(gus) == ["* Mo muted you in class for 5 minutes"]
    assert ask(gus, "public class hi") == "error: not allowed: you are muted in class"
    clock.now += 5 * 60 - 1
    assert ask(gus, "public class hi") == "error: not allowed: you are muted in class"
    clock.now += 1
    gus.send("public class back")
    assert got(ann) == ["[public group class from gus] back"]
    assert not hub.groups["class"].guarded  # the expired mute is gone
    assert ask(mo, "mute class gus") == "ok: muted gus in class"
    assert got(gus) == ["* Mo muted you in class"]
    clock.now += 365 * 86400
    assert ask(gus, "public class hi") == "error: not allowed: you are muted in class"
    assert ask(mo, "unmute class gus") == "ok: unmuted gus in class"
    assert got(gus) == ["* Mo unmuted you in class"]
    gus.send("public class free")
    assert got(ann) == ["[public group class from gus] free"]
    assert ask(mo, "mute class ghost 10080") == "ok: muted ghost in class for 10080 minutes"


@pytest.mark.parametrize("minutes", ["0", "10081", "x", "+5", "٣", "-1", "1.5"])
def test_bad_minutes(hub, room, minutes):
    owner, mo, ann, gus = room
    assert ask(mo, f"mute class gus {minutes}") == f"error: invalid minutes: {minutes}"
    assert ask(mo, "mute class gus 05") == "ok: muted gus in class for 5 minutes"


def test_history_joined(hub, room):
    owner, mo, ann, gus = room
    owner.send("public class one")
    assert ask(owner, "set class history joined") == "ok: set history joined in class"
    ben = chat(hub, "Ben")
    ben.send("join class")
    ben.read_until(lambda line: line == "ok: joined group class")
    assert ask(ben, "history class") == "ok: end of history class"
    owner.send("public class two")
    assert got(ben) == ["[public group class from Owner] two"]
    ben.send("history class")
    assert ben.read_line().endswith("from Owner] two")
    assert got(ben) == ["ok: end of history class"]
    ann.user.queue.clear()
    ann.pending.clear()
    ann.send("history class")
    assert [ann.read_line().rsplit("] ", 1)[1] for _ in range(2)] == ["one", "two"]
    assert ask(owner, "set class history shared") == "ok: set history shared in class"
    ben.send("history class")
    assert len(ben.read_until(lambda line: line.startswith("ok: end"))) == 3


def test_private_group_looks_absent_to_outsiders(hub, room):
    owner, mo, ann, gus = room
    assert ask(owner, "set class visibility private") == "ok: set visibility private in class"
    ben, mia = chat(hub, "Ben"), chat(hub, "Mia")
    assert ask(ben, "join class") == "error: no such group: class"
    assert ask(ben, "info class") == "error: no such group: class"
    assert ask(ben, "history class") == "error: no such group: class"
    assert ask(ben, "kick class gus") == "error: no such group: class"
    assert ask(ben, "groups") == "groups: General"
    assert ask(ben, "create class") == "error: group already exists: class"
    assert ask(gus, "groups") == "groups: class General"
    assert ask(mo, "invite class mia") == "ok: invited Mia to class"
    assert got(mia) == ["* Mo invited you to class"]
    assert ask(mia, "groups") == "groups: class General"
    assert ask(mia, "info class").startswith("info: class owner Owner")
    assert ask(owner, "set class visibility public") == "ok: set visibility public in class"
    assert ask(ben, "groups") == "groups: class General"


def test_mod_and_invite_without_accounts(clock):
    hub = Hub(clock=clock)
    alice = Chat(hub, "alice")
    alice.send("create room")
    assert got(alice) == ["ok: created group room"]
    assert ask(alice, "info room").startswith("info: room owner - ")
    assert ask(alice, "set room join invite") == (
        "error: not allowed: only the owner of room can do that")


@pytest.mark.parametrize(("policy", "guest", "account"), [
    ("all", "ok: created group g1", "ok: created group g2"),
    ("accounts", "error: not allowed: only accounts can create groups", "ok: created group g2"),
    ("admins", "error: not allowed: only administrators can create groups",
     "error: not allowed: only administrators can create groups"),
])
def test_group_creation_policy(clock, policy, guest, account):
    book = AccountBook("optional", bytes(32), 86400.0, [Account("Ann", "$argon2id$x", 0.0)])
    hub = Hub(clock=clock, accounts=book, group_creation=policy)
    gus, ann = chat(hub, "gus"), chat(hub, "Ann")
    assert ask(gus, "create g1") == guest
    assert ask(ann, "create g2") == account


def test_snapshot_and_restore_round_trip(hub, room, clock):
    owner, mo, ann, gus = room
    for line in ("set class join invite", "set class post moderators",
                 "set class history joined", "set class visibility private",
                 "invite class mia", "ban class ghost", "mute class gus 5", "mute class ann"):
        assert ask(owner, line).startswith("ok: ")
    group = hub.groups["class"]
    data = M.snapshot(group)
    fresh = Group("class", "Owner", 0.0, 10)
    M.restore(fresh, data)
    assert M.snapshot(fresh) == data
    assert fresh.settings() == ["invite", "moderators", "joined", "private"]
    assert fresh.guarded and fresh.owner == "owner" and fresh.mods == {"mo": "Mo"}
    assert fresh.muted["gus"] == clock.now + 300 and fresh.muted["ann"] == float("inf")
    only_owner = Group("x", "", 0.0, 10)
    M.restore(only_owner, '{"owner": "owner"}')  # what a create stores
    assert only_owner.owner == "owner" and only_owner.settings() == [
        "open", "all", "shared", "public"] and not only_owner.guarded


def test_in_a_cluster_changes_wait_for_redis_and_apply_in_its_order(hub, room):
    """Cluster mode: a handler changes nothing itself, it leaves a `Change` for
    Redis; every node applies the announced changes once, in version order, with
    their side effects there (a ban removes a member, a notice reaches its target)."""
    owner, mo, ann, gus = room
    hub.join_cluster("n1")
    group = hub.groups["class"]
    owner.send("ban class gus")
    assert got(owner) == []  # the reply waits for Redis
    assert hub.roles_work and "gus" in group.members and not group.banned  # nothing yet
    (user, g, reply, change), = hub.roles_work
    hub.roles_work.clear()
    assert (user, g, reply) == (owner.user, group, "ok: banned gus from class")
    assert (change.field, change.value, change.actor, change.target) == (
        "ban:gus", "gus", "Owner", "gus")
    # The announcement comes back (version 1): applied, gus removed here.
    hub.remote_roles("class", 1, change.field, change.value, change.actor, change.target,
                     change.notice, "spam")
    assert group.banned == {"gus": "gus"} and "gus" not in group.members
    assert got(gus) == ["* Owner removed you from class: spam"]
    assert got(ann) == ["* gus was removed from class by Owner"] and got(owner) == []
    # An older or repeated version is already here; a newer one applies.
    hub.remote_roles("class", 1, "ban:gus", None, "Owner", None, None, None)
    assert "gus" in group.banned
    hub.remote_roles("class", 2, "mute:ann", "inf", "Mo", "ann", "* Mo muted you in class",
                     None)
    assert group.muted == {"ann": float("inf")} and got(ann) == ["* Mo muted you in class"]
    # What Redis holds replaces it all after a (re)connection.
    hub.reload_roles("class", {"join": "invite", "mod:mo": "Mo", "v": "7"})
    assert group.rv == 7 and group.invite_only and not group.banned and not group.muted
    assert ask(gus, "join class") == "error: not allowed: class is invite-only"
    # Redis unreachable: refused at once, nothing queued.
    hub.unavailable = True
    assert ask(owner, "set class post moderators") == "error: cluster unavailable"
    assert not hub.roles_work


def test_a_ban_missed_while_cut_off_from_redis_removes_the_member_on_reload(hub, room):
    """A node reloading the roles after an outage removes its member banned meanwhile
    (otherwise it could go on posting: only `join` checks bans)."""
    owner, mo, ann, gus = room
    hub.join_cluster("n1")
    group = hub.groups["class"]
    hub.reload_roles("class", {"mod:mo": "Mo", "ban:gus": "gus", "v": "5"})
    assert "gus" in group.banned and "gus" not in group.members
    assert got(gus) == ["* a moderator removed you from class"]
    assert got(ann) == got(owner) == ["* gus was removed from class by a moderator"]
    assert ask(gus, "join class") == "error: not allowed: you are banned from class"
    hub.reload_roles("class", {"mod:mo": "Mo", "ban:gus": "gus", "v": "5"})  # again: no-op
    assert got(ann) == []


def test_a_redis_roles_hash_loads_as_it_applies(hub):
    """RedisStore.load_roles turns a group's hash into `restore`'s document
    (`document`); a node reconnecting applies the hash itself (`replace`): same roles."""
    fields = {"join": "invite", "post": "moderators", "visibility": "private",
              "mod:mo": "Mo", "inv:mia": "Mia", "ban:ghost": "Ghost", "mute:gus": "1234.5",
              "mute:ann": "inf", "v": "9"}
    loaded = Group("class", "Owner", 0.0, 10)
    M.restore(loaded, M.document("owner", fields))
    applied = hub.add_group("class", "Owner")
    applied.owner = "owner"
    M.replace(hub, applied, fields)
    assert M.snapshot(loaded) == M.snapshot(applied)
    assert applied.rv == 9 and hub.private_groups == 1
    assert loaded.muted == {"gus": 1234.5, "ann": float("inf")} and loaded.guarded
    assert loaded.settings() == ["invite", "moderators", "shared", "private"]
    M.replace(hub, applied, {"v": "10"})  # all removed meanwhile
    assert hub.private_groups == 0 and not applied.guarded and not applied.mods


def test_offline_and_unknown_targets(hub, room):
    owner, mo, ann, gus = room
    # Mia has an account and is offline; "nobody" is neither online nor an account.
    assert ask(mo, "invite class mia") == "ok: invited Mia to class"
    assert ask(mo, "mute class MIA 3") == "ok: muted Mia in class for 3 minutes"
    assert ask(mo, "ban class mia spam") == "ok: banned Mia from class"
    assert ask(mo, "kick class mia") == "error: Mia is not a member of class"
    assert ask(mo, "invite class nobody") == "error: not allowed: nobody has no account"
    assert ask(owner, "mod class nobody") == "error: not allowed: nobody has no account"
    assert ask(mo, "ban class nobody") == "ok: banned nobody from class"
    assert ask(mo, "mute class nobody") == "ok: muted nobody in class"
    assert ask(mo, "kick class nobody") == "error: nobody is not a member of class"
    assert ask(mo, "unmute class nobody") == "ok: unmuted nobody in class"
    assert ask(ann, "set class join invite") == \
        "error: not allowed: only the owner of class can do that"
    assert ask(ann, "unmod class mo") == "error: not allowed: only the owner of class can do that"


def test_audit_hook_and_moderation_counter(hub, room, clock):
    owner, mo, ann, gus = room
    hub.audit.clear()
    before = dict(hub.stats.moderation)
    assert ask(mo, "kick class gus bye now") == "ok: removed gus from class"
    assert ask(mo, "mute class ann 5") == "ok: muted Ann in class for 5 minutes"
    assert ask(owner, "set class post moderators") == "ok: set post moderators in class"
    assert ask(ann, "kick class mo").startswith("error: ")  # refused: not recorded
    assert ask(mo, "kick class owner").startswith("error: ")
    assert [(e.actor, e.action, e.group, e.target, e.detail) for e in hub.audit] == [
        ("Mo", "kick", "class", "gus", "bye now"),
        ("Mo", "mute", "class", "Ann", "5"),
        ("Owner", "set", "class", None, "post moderators"),
    ]
    assert all(e.at == clock() for e in hub.audit)
    changed = {k: v - before[k] for k, v in hub.stats.moderation.items() if v != before[k]}
    assert changed == {"kick": 1, "mute": 1, "set": 1}


def test_the_administrator_has_the_owners_powers_everywhere(hub, room):
    from chatsrv.core.audit import ADMIN_ACCOUNT, ADMIN_ACTOR
    from chatsrv.core.model import User

    owner, mo, ann, gus = room
    gus.send("create lounge")
    assert got(gus) == ["ok: created group lounge"]
    assert hub.groups["lounge"].owner is None
    admin = User(ADMIN_ACTOR, account=ADMIN_ACCOUNT)
    for group in ("General", "lounge", "class"):
        assert hub.groups[group.lower()].rank(ADMIN_ACCOUNT) == 2
        M.set_(hub, admin, (group, "visibility", "private"))
        assert hub.groups[group.lower()].private
    M.mod(hub, admin, ("lounge", "ann"))
    assert got(ann)[-1] == "* admin made you a moderator of lounge"
    M.kick(hub, admin, ("class", "mo", "rules"))  # a moderator, too
    assert got(mo)[-1] == "* admin removed you from class: rules"
    assert hub.groups["class"].sees(admin)
    assert [e.actor for e in hub.audit][-2:] == ["admin", "admin"]

"""Group roles and moderation (PROTOCOL.md v2 "Group roles and moderation"):
the handlers of `info`, `set`, `mod`/`unmod`, `invite`/`uninvite`, `kick`,
`ban`/`unban`, `mute`/`unmute`, registered in `commands.COMMANDS`.

The state is plain data on `Group` (model.py): `owner` (an account key),
`mods`, `invited`, `banned`, `muted` (dicts keyed by name_key) and four
booleans for the settings. `join`, `public` and `history` check it with dict
lookups; `public` pays one attribute test (`Group.guarded`) unless posting is
restricted or someone is muted.

With a durable store a change is acknowledged once stored: the handler leaves
(user, group, reply) in `Hub.roles_work`, the transport has the group's
`snapshot` written (SQLite `group_roles`) and then queues the reply; a restart
puts it back with `restore`.

In a cluster (`hub.outbox is not None`) a handler changes nothing itself: it
checks, then leaves a `Change` (one field of the group's roles, see `apply`)
in `Hub.roles_work`; the server has Redis write it and announce it to every
node in one atomic step (backplane/keys.py ROLES), and every node, this one
included, applies it when the announcement arrives (`remote_change`), in
Redis's order, with its side effects there (the notice to a target online on
that node, a banned member removed). The actor's reply waits for this node's
own echo. A kick of another node's member asks that node to remove it
(`remove_request` there) and the reply waits until this node heard so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from math import inf
from typing import TYPE_CHECKING

from . import protocol as P
from .audit import AuditEntry
from .errors import ProtocolError
from .model import Group, User

if TYPE_CHECKING:
    from .hub import Hub


@dataclass(slots=True)
class Change:
    """One change of a group's roles, with what it does beyond the field.

    `field` is a setting's key (`join`, `post`, `history`, `visibility`) or
    `mod:`, `inv:`, `ban:` or `mute:` and a user key; `value` the setting's
    value, the user's name as first written (`mute:`: the end of the mute, Unix
    seconds, or `inf`), or None to remove the field. `field` None: a `kick`
    (nothing stored). `notice` goes to the target if online (and not the
    actor); `node` is the node of another node's member a kick or ban removes
    (the reply waits until this node heard it is out)."""

    group: Group
    field: str | None
    value: str | None
    actor: str  # the actor's name as logged in
    target: str | None = None  # the key of the user it concerns
    notice: str | None = None
    reason: str | None = None  # kick, ban
    node: str | None = None


def _done(hub: Hub, user: User, group: Group, line: str) -> None:
    """A change is made on this node: reply now, or with a durable store once the
    store has it and its audit entry (`save_roles`). In a cluster a change goes
    through Redis instead (`_change`); what is left (a kick here) answers now."""
    if hub.durable and hub.outbox is None:
        hub.roles_work.append((user, group, line, None))
    else:
        hub.reply(user, line)


def _change(hub: Hub, user: User, change: Change, line: str) -> None:
    """Make `change` and reply `line`: at once on one node (once stored with a
    durable store); in a cluster once Redis has it and this node applied it."""
    if hub.outbox is not None:
        hub.roles_work.append((user, change.group, line, change))
        return
    applied(hub, change)
    _done(hub, user, change.group, line)


def apply(hub: Hub, group: Group, field: str, value: str | None) -> None:
    """Set (or, `value` None, remove) one field of the group's roles in memory."""
    kind, _, key = field.partition(":")
    if not key:
        values = P.SETTINGS.get(kind)
        if values is None:
            return
        on = value == values[1]
        if kind == "join":
            group.invite_only = on
        elif kind == "post":
            group.mods_post = on
        elif kind == "history":
            group.joined_history = on
        else:
            if on != group.private:
                hub.private_groups += 1 if on else -1
            group.private = on
    elif kind == "mute":
        if value is None:
            group.muted.pop(key, None)
        else:
            group.muted[key] = inf if value == "inf" else float(value)
    else:
        table = {"mod": group.mods, "inv": group.invited, "ban": group.banned}.get(kind)
        if table is None:
            return
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    group.reguard()


def applied(hub: Hub, change: Change) -> None:
    """Apply `change` here with its side effects on this node: the notice to its
    target if the target is online here, a banned member here removed."""
    group = change.group
    if change.field is not None:
        apply(hub, group, change.field, change.value)
    target = change.target
    if target is None:
        return
    if change.notice is not None and target != P.name_key(change.actor):
        online = hub.users.get(target)
        if online is not None:
            hub.reply(online, change.notice)
    if change.value is not None and change.field == "ban:" + target:
        victim = group.members.get(target)
        if victim is not None:
            hub.remove_member(victim, group, change.actor, change.reason)


def remote_change(hub: Hub, gkey: str, version: int, field: str | None, value: str | None,
                  actor: str, target: str | None, notice: str | None,
                  reason: str | None) -> None:
    """Cluster mode: a change as Redis announced it (this node's own included):
    applied once, in Redis's order (`version`)."""
    group = hub.groups.get(gkey)
    if group is None or version <= group.rv:
        return
    group.rv = version
    applied(hub, Change(group, field, value, actor, target, notice, reason))


def replace(hub: Hub, group: Group, fields: dict[str, str]) -> None:
    """Cluster mode: the group's roles as Redis has them now (its hash, `v` its
    version), replacing this node's (after (re)connecting: what it missed)."""
    if group.private:
        hub.private_groups -= 1  # `apply` counts it again if it stays private
    group.private = group.invite_only = group.mods_post = group.joined_history = False
    group.mods, group.invited, group.banned, group.muted = {}, {}, {}, {}
    for field, value in fields.items():
        if field != "v":
            apply(hub, group, field, value)
    group.reguard()
    group.rv = int(fields.get("v", 0))
    # A ban this node missed while cut off from Redis: its member here goes now,
    # as the announcement would have done (Redis keeps no actor: "a moderator").
    for key in list(group.banned):
        victim = group.members.get(key)
        if victim is not None:
            hub.remove_member(victim, group, P.UNKNOWN_MODERATOR, None)


def document(owner: str | None, fields: dict[str, str]) -> str:
    """A group's roles hash in Redis as the document `restore` takes."""
    doc: dict[str, dict[str, str | float | None]] = {"mods": {}, "invited": {}, "banned": {},
                                                      "muted": {}}
    settings = [values[0] for values in P.SETTINGS.values()]
    names = list(P.SETTINGS)
    for field, value in fields.items():
        kind, _, key = field.partition(":")
        if kind in P.SETTINGS and not key:
            settings[names.index(kind)] = value
        elif kind == "mute" and key:
            doc["muted"][key] = None if value == "inf" else float(value)
        elif kind in ("mod", "inv", "ban") and key:
            doc[{"mod": "mods", "inv": "invited", "ban": "banned"}[kind]][key] = value
    return json.dumps({**doc, "owner": owner, "settings": settings}, ensure_ascii=False,
                      sort_keys=True)


def _audit(hub: Hub, user: User, action: str, group: Group, target: str | None,
           detail: str | None = None) -> None:
    """A change is made: the audit hook (`Hub.audit`, stored by the transport) and
    `chatsrv_moderation_total{action}`."""
    hub.audit.append(AuditEntry(hub.clock(), user.name, action, group.name, target, detail))
    hub.stats.moderation[action] += 1


def snapshot(group: Group) -> str:
    """The group's roles and moderation as one JSON document (what the store keeps)."""
    return json.dumps({
        "owner": group.owner, "mods": group.mods, "invited": group.invited,
        "banned": group.banned,
        "muted": {key: (None if until == inf else until) for key, until in group.muted.items()},
        "settings": group.settings(),
    }, ensure_ascii=False, sort_keys=True)


def restore(group: Group, data: str) -> None:
    """Put back what `snapshot` wrote (start-up)."""
    doc = json.loads(data)
    group.owner = doc.get("owner")
    group.mods = dict(doc.get("mods", {}))
    group.invited = dict(doc.get("invited", {}))
    group.banned = dict(doc.get("banned", {}))
    group.muted = {key: inf if until is None else float(until)
                   for key, until in doc.get("muted", {}).items()}
    join, post, history, visibility = doc.get("settings", ["open", "all", "shared", "public"])
    group.invite_only = join == "invite"
    group.mods_post = post == "moderators"
    group.joined_history = history == "joined"
    group.private = visibility == "private"
    group.reguard()


def _target(hub: Hub, name: str) -> tuple[str, str, User | None]:
    """A `<user>` argument: its key, its name as first written (the user's as
    logged in, else the account's, else as given in NFC) and the user if online."""
    nfc = P.normalize(name)
    key = P.name_key(nfc)
    user = hub.users.get(key)
    if user is not None:
        return key, user.name, user
    book = hub.accounts
    account = book.accounts.get(key) if book is not None else None
    return key, account.name if account is not None else nfc, None


def _has_account(hub: Hub, key: str) -> bool:
    book = hub.accounts
    return book is not None and key in book.accounts


def _reachable(hub: Hub) -> None:
    """In a cluster a change needs Redis: refused at once, changing nothing, without it."""
    if hub.unavailable:
        raise ProtocolError(P.CLUSTER_UNAVAILABLE)


def _remote_node(hub: Hub, group: Group, key: str) -> str | None:
    """Cluster mode: the node of `key` if it is a member of `group` on another node."""
    if key not in group.remote:
        return None
    remote = hub.remote_users.get(key)
    return remote.node if remote is not None else None


def _owned(hub: Hub, user: User, name: str) -> Group:
    _reachable(hub)
    group = hub.visible_group(user, name)
    if group.rank(user.account) < 2:
        raise ProtocolError(P.only_owner(group.name))
    return group


def _moderated(hub: Hub, user: User, name: str, target: str) -> tuple[Group, str, str,
                                                                      User | None]:
    """The group a moderation command acts on and its target, after the checks
    every such command shares (who may, and a moderator acting on a peer)."""
    _reachable(hub)
    group = hub.visible_group(user, name)
    rank = group.rank(user.account)
    if rank < 1:
        raise ProtocolError(P.only_moderator(group.name))
    key, shown, online = _target(hub, target)
    if rank < 2:
        if key == group.owner:
            raise ProtocolError(P.is_owner(shown, group.name))
        if key in group.mods:
            raise ProtocolError(P.is_moderator(shown, group.name))
    return group, key, shown, online


# info <group>
def info(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group = hub.visible_group(user, args[0])
    owner = None
    if group.owner is not None:
        book = hub.accounts
        account = book.accounts.get(group.owner) if book is not None else None
        owner = account.name if account is not None else group.owner
    mods = sorted(group.mods.values(), key=P.name_key)
    hub.reply(user, P.info_line(group.name, owner, mods, group.size(), group.settings()))


# set <group> <key> <value>
def set_(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group = _owned(hub, user, args[0])
    key, value = args[1], args[2]
    values = P.SETTINGS.get(key)
    if values is None:
        raise ProtocolError(P.invalid_setting(key))
    if value not in values:
        raise ProtocolError(P.invalid_value(key, value))
    _change(hub, user, Change(group, key, value, user.name), P.set_line(key, value, group.name))
    _audit(hub, user, "set", group, None, f"{key} {value}")


# mod <group> <user> / unmod <group> <user>
def mod(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group = _owned(hub, user, args[0])
    key, shown, _ = _target(hub, args[1])
    if not _has_account(hub, key):
        raise ProtocolError(P.no_account(shown))
    _change(hub, user, Change(group, "mod:" + key, shown, user.name, key,
                              P.modded_notice(user.name, group.name)),
            P.modded(shown, group.name))
    _audit(hub, user, "mod", group, shown)


def unmod(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group = _owned(hub, user, args[0])
    key, shown, _ = _target(hub, args[1])
    _change(hub, user, Change(group, "mod:" + key, None, user.name),
            P.unmodded(shown, group.name))
    _audit(hub, user, "unmod", group, shown)


# invite <group> <user> / uninvite <group> <user>
def invite(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group, key, shown, _ = _moderated(hub, user, args[0], args[1])
    if not _has_account(hub, key):
        raise ProtocolError(P.no_account(shown))
    _change(hub, user, Change(group, "inv:" + key, shown, user.name, key,
                              P.invited_notice(user.name, group.name)),
            P.invited(shown, group.name))
    _audit(hub, user, "invite", group, shown)


def uninvite(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group, key, shown, _ = _moderated(hub, user, args[0], args[1])
    _change(hub, user, Change(group, "inv:" + key, None, user.name),
            P.uninvited(shown, group.name))
    _audit(hub, user, "uninvite", group, shown)


# kick <group> <user> [reason]
def kick(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group, key, shown, _ = _moderated(hub, user, args[0], args[1])
    reason = args[2] if len(args) > 2 else None
    victim = group.members.get(key)
    line = P.removed(shown, group.name)
    if victim is not None:
        hub.remove_member(victim, group, user.name, reason)
        _done(hub, user, group, line)
    else:
        node = _remote_node(hub, group, key)
        if node is None:
            raise ProtocolError(P.not_member_of(shown, group.name))
        # Another node's member: that node removes it; the reply waits until this
        # node heard so (after every message it sent before: see docs/scaling.md).
        hub.roles_work.append((user, group, line,
                               Change(group, None, None, user.name, key, None, reason, node)))
    _audit(hub, user, "kick", group, shown, reason)


# ban <group> <user> [reason] / unban <group> <user>
def ban(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group, key, shown, _ = _moderated(hub, user, args[0], args[1])
    reason = args[2] if len(args) > 2 else None
    _change(hub, user, Change(group, "ban:" + key, shown, user.name, key, None, reason,
                              _remote_node(hub, group, key)),
            P.banned(shown, group.name))
    _audit(hub, user, "ban", group, shown, reason)


def unban(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group, key, shown, _ = _moderated(hub, user, args[0], args[1])
    _change(hub, user, Change(group, "ban:" + key, None, user.name),
            P.unbanned(shown, group.name))
    _audit(hub, user, "unban", group, shown)


# mute <group> <user> [minutes] / unmute <group> <user>
def mute(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group, key, shown, _ = _moderated(hub, user, args[0], args[1])
    minutes = P.parse_minutes(args[2]) if len(args) > 2 else None
    # The clock is wall time (Unix seconds): a timed mute ends on time after a restart.
    until = repr(hub.clock() + minutes * 60) if minutes is not None else "inf"
    _change(hub, user, Change(group, "mute:" + key, until, user.name, key,
                              P.muted_notice(user.name, group.name, minutes)),
            P.muted(shown, group.name, minutes))
    _audit(hub, user, "mute", group, shown, None if minutes is None else str(minutes))


def unmute(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group, key, shown, _ = _moderated(hub, user, args[0], args[1])
    _change(hub, user, Change(group, "mute:" + key, None, user.name, key,
                              P.unmuted_notice(user.name, group.name)),
            P.unmuted(shown, group.name))
    _audit(hub, user, "unmute", group, shown)


def check_post(hub: Hub, user: User, group: Group) -> None:
    """`public` in a guarded group (posting restricted or someone muted)."""
    if group.mods_post and group.rank(user.account) < 1:
        raise ProtocolError(P.only_moderators_post(group.name))
    until = group.muted.get(user.key)
    if until is not None:
        if until > hub.clock():
            raise ProtocolError(P.muted_in(group.name))
        del group.muted[user.key]  # a timed mute ends on its own
        group.reguard()


def check_join(user: User, group: Group) -> None:
    key = user.key
    if group.invite_only and key not in group.invited and group.rank(user.account) < 1:
        raise ProtocolError(P.invite_only(group.name))
    if key in group.banned:
        raise ProtocolError(P.banned_from(group.name))

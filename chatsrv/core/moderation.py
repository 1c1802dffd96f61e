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
puts it back with `restore`. Not in the cluster yet: nothing reaches Redis.
"""

from __future__ import annotations

import json
from math import inf
from typing import TYPE_CHECKING

from . import protocol as P
from .audit import AuditEntry
from .errors import ProtocolError
from .model import Group, User

if TYPE_CHECKING:
    from .hub import Hub


def _done(hub: Hub, user: User, group: Group, line: str) -> None:
    """A change is made: reply now, or once the store has it (`hub.durable`)."""
    if hub.durable:
        hub.roles_work.append((user, group, line))
    else:
        hub.reply(user, line)


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


def _single_node(hub: Hub) -> None:
    """Roles live in this node's memory and SQLite only: in a cluster another node
    would not enforce them, so no change is accepted there (rather than a group
    that looks protected and is not). Cluster support is the rest of issue 14."""
    if hub.outbox is not None:
        raise ProtocolError(P.ROLES_NOT_IN_CLUSTER)


def _owned(hub: Hub, user: User, name: str) -> Group:
    _single_node(hub)
    group = hub.visible_group(user, name)
    if group.rank(user.account) < 2:
        raise ProtocolError(P.only_owner(group.name))
    return group


def _moderated(hub: Hub, user: User, name: str, target: str) -> tuple[Group, str, str,
                                                                      User | None]:
    """The group a moderation command acts on and its target, after the checks
    every such command shares (who may, and a moderator acting on a peer)."""
    _single_node(hub)
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
    on = value == values[1]
    if key == "join":
        group.invite_only = on
    elif key == "post":
        group.mods_post = on
    elif key == "history":
        group.joined_history = on
    else:
        if on != group.private:
            hub.private_groups += 1 if on else -1
        group.private = on
    group.reguard()
    _done(hub, user, group, P.set_line(key, value, group.name))
    _audit(hub, user, "set", group, None, f"{key} {value}")


# mod <group> <user> / unmod <group> <user>
def mod(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group = _owned(hub, user, args[0])
    key, shown, online = _target(hub, args[1])
    if not _has_account(hub, key):
        raise ProtocolError(P.no_account(shown))
    group.mods[key] = shown
    _done(hub, user, group, P.modded(shown, group.name))
    _audit(hub, user, "mod", group, shown)
    if online is not None and online is not user:
        hub.reply(online, P.modded_notice(user.name, group.name))


def unmod(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group = _owned(hub, user, args[0])
    key, shown, _ = _target(hub, args[1])
    group.mods.pop(key, None)
    _done(hub, user, group, P.unmodded(shown, group.name))
    _audit(hub, user, "unmod", group, shown)


# invite <group> <user> / uninvite <group> <user>
def invite(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group, key, shown, online = _moderated(hub, user, args[0], args[1])
    if not _has_account(hub, key):
        raise ProtocolError(P.no_account(shown))
    group.invited[key] = shown
    _done(hub, user, group, P.invited(shown, group.name))
    _audit(hub, user, "invite", group, shown)
    if online is not None and online is not user:
        hub.reply(online, P.invited_notice(user.name, group.name))


def uninvite(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group, key, shown, _ = _moderated(hub, user, args[0], args[1])
    group.invited.pop(key, None)
    _done(hub, user, group, P.uninvited(shown, group.name))
    _audit(hub, user, "uninvite", group, shown)


def _remove(hub: Hub, actor: User, group: Group, victim: User, reason: str | None) -> None:
    """Take `victim` out of `group` now (nothing it sends later reaches the group),
    and tell it and the remaining members other than the actor."""
    hub.drop_member(victim, group)
    hub.reply(victim, P.removed_you(actor.name, group.name, reason))
    data = P.encode(P.removed_notice(victim.name, group.name, actor.name))
    hub.stats.notices += hub.fanout(group, data, actor)


# kick <group> <user> [reason]
def kick(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group, key, shown, _ = _moderated(hub, user, args[0], args[1])
    victim = group.members.get(key)
    if victim is None:
        raise ProtocolError(P.not_member_of(shown, group.name))
    reason = args[2] if len(args) > 2 else None
    hub.reply(user, P.removed(shown, group.name))
    _remove(hub, user, group, victim, reason)
    _audit(hub, user, "kick", group, victim.name, reason)


# ban <group> <user> [reason] / unban <group> <user>
def ban(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group, key, shown, _ = _moderated(hub, user, args[0], args[1])
    group.banned[key] = shown
    reason = args[2] if len(args) > 2 else None
    _done(hub, user, group, P.banned(shown, group.name))
    victim = group.members.get(key)
    if victim is not None:
        _remove(hub, user, group, victim, reason)
    _audit(hub, user, "ban", group, shown, reason)


def unban(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group, key, shown, _ = _moderated(hub, user, args[0], args[1])
    group.banned.pop(key, None)
    _done(hub, user, group, P.unbanned(shown, group.name))
    _audit(hub, user, "unban", group, shown)


# mute <group> <user> [minutes] / unmute <group> <user>
def mute(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group, key, shown, online = _moderated(hub, user, args[0], args[1])
    minutes = P.parse_minutes(args[2]) if len(args) > 2 else None
    group.muted[key] = hub.clock() + minutes * 60 if minutes is not None else inf
    group.reguard()
    _done(hub, user, group, P.muted(shown, group.name, minutes))
    _audit(hub, user, "mute", group, shown, None if minutes is None else str(minutes))
    if online is not None and online is not user:
        hub.reply(online, P.muted_notice(user.name, group.name, minutes))


def unmute(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group, key, shown, online = _moderated(hub, user, args[0], args[1])
    group.muted.pop(key, None)
    group.reguard()
    _done(hub, user, group, P.unmuted(shown, group.name))
    _audit(hub, user, "unmute", group, shown)
    if online is not None and online is not user:
        hub.reply(online, P.unmuted_notice(user.name, group.name))


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

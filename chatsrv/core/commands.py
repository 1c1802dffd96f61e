"""The command table: one entry per command word, its spec and its handler.

A command lives here and nowhere else: `COMMANDS` maps the lower-cased word
to a `Command` (the argument spec `parse` checks before any handler runs, and
the handler), `help` lists the table's words, and `Hub.stats.commands` counts
them. A handler is a plain function `(hub, user, args)`: it replies with
`hub.reply`/`hub.send_line`, raises `ProtocolError` (its text is the reply)
or `GroupPending` (the hub runs the line again once that group's commit is
decided), and returns True to end the session (`exit`).

To add a command: write its handler below, add one `Command(...)` line to
`COMMANDS`, and its reply wording to protocol.py.

Hot path (`public`): dispatch is one dict lookup (`parse`); the delivery line
is encoded once and the same bytes object appended to every member's queue
(`Hub.fanout`, cached appenders); the cluster costs one `is not None` test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import accounts as A
from . import events as E
from . import moderation as M
from . import protocol as P
from .commits import HistoryQuery, JoinQuery, StoredQuery
from .errors import ProtocolError
from .events import new_public
from .model import ENTRY_OVERHEAD, User, sizeof

if TYPE_CHECKING:
    from .hub import Hub

Handler = Callable[["Hub", User, tuple[str, ...]], "bool | None"]


@dataclass(frozen=True, slots=True)
class Command:
    word: str
    spec: P.Spec
    run: Handler


def parse(line: str) -> tuple[Command, tuple[str, ...]] | None:
    """One decoded line (no LF, CR already dropped) after login: its command and
    arguments, None for a blank line (ignored, no reply); raises ProtocolError."""
    body = line.lstrip(P.SEPARATORS)
    if not body.rstrip(P.SEPARATORS):
        return None
    word, rest = P.split_word(body)
    command = COMMANDS.get(word.lower())
    if command is None:
        raise ProtocolError(P.unknown_command(word))
    return command, P.parse_args(command.spec, rest)


def _need_cluster(hub: Hub) -> None:
    if hub.unavailable:
        raise ProtocolError(P.CLUSTER_UNAVAILABLE)


# create <group>
# With a durable store the reply waits for the commit: the session takes
# `hub.commits` right after this call and the writer answers (see commits.py).
def create(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    _need_cluster(hub)
    policy = hub.group_creation
    if policy != "all" and (policy == "admins" or user.account is None):
        raise ProtocolError(P.ONLY_ADMINS_CREATE if policy == "admins" else P.ONLY_ACCOUNTS_CREATE)
    commits = hub.commits
    name = commits.check(args[0])
    limiter = hub.create_rate
    if limiter is not None and user.addr is not None and not limiter.take(user.addr):
        raise ProtocolError(P.CREATING_TOO_FAST)
    group = commits.reserve(name, created_by=user.name, checked=True)
    group.owner = user.account  # a guest's group has no owner
    if hub.durable:
        commits.uncommitted.append((user, group))
    else:
        commits.committed(group, user)


# join <group>
def join(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group = hub.visible_group(user, args[0])
    if group.key in user.groups:
        raise ProtocolError(P.already_member(group.name))
    M.check_join(user, group)
    if hub.outbox is not None and not group.members:
        # The first member here: the reply waits until this node hears the
        # group's channel, so nothing sent after it is missed (see backplane).
        hub.join_group(user, group)
        hub.commits.queries.append(JoinQuery(user, group))
        return
    hub.reply(user, P.joined(group.name))
    hub.join_group(user, group)


# leave <group>
def leave(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group = hub.member_group(user, args[0])
    hub.reply(user, P.left(group.name))
    hub.leave_group(user, group)


# groups
def groups(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    _need_cluster(hub)
    hub.send_line(user, hub.groups_for(user))


# users
def users(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    _need_cluster(hub)
    names = [u.name for u in hub.users.values()]
    names.extend(u.name for u in hub.remote_users.values())
    hub.reply(user, P.listing("users", names))


# public <group> <message>
def public(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    group = hub.member_group(user, args[0])
    text = args[1]
    if P.has_control(text):
        raise ProtocolError(P.CONTROL_CHARS)
    if group.guarded:  # posting restricted, or someone muted
        M.check_post(hub, user, group)
    if hub.held_full:
        raise ProtocolError(P.CLUSTER_UNAVAILABLE)
    data = P.encode(P.public_prefix(group.name, user.name) + text)
    stats = hub.stats
    stats.messages_public += 1
    stats.deliveries_public += hub.fanout(group, data, user)
    outbox = hub.outbox
    if outbox is not None:
        outbox.append(new_public((group, data, user.name, text)))
    if hub.history_size:
        # Kept in the group's ring and counted against --history-memory (see
        # Hub.trim_history); inline, as this runs once per message.
        ring = group.history
        if len(ring) == hub.history_size:  # the ring drops its oldest at the append
            oldest = ring[0]
            hub.history_bytes -= sizeof(oldest[2]) + len(oldest[1]) + ENTRY_OVERHEAD
            group.skip += 1  # its record in history_order goes stale
            hub.history_stale += 1
            if hub.history_stale > hub.compact_at:
                hub.compact_order()
        sender = user.name
        ring.append((hub.clock(), sender, text))
        group.seq += 1
        hub.history_order.append(group)
        hub.history_bytes += sizeof(text) + len(sender) + ENTRY_OVERHEAD
        journal = hub.journal
        if journal is not None:
            if not group.unsaved:
                journal.append(group)
            group.unsaved += 1
        if hub.history_bytes > hub.history_budget:
            hub.trim_history()


# private <user> <message>
def private(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    key = P.name_key(P.normalize(args[0]))
    target = hub.users.get(key)
    if target is None:
        remote = hub.remote_users.get(key)
        if remote is None:
            raise ProtocolError(P.no_such_user(args[0]))
        if P.has_control(args[1]):
            raise ProtocolError(P.CONTROL_CHARS)
        _need_cluster(hub)
        outbox = hub.outbox
        assert outbox is not None  # remote users exist in cluster mode only
        outbox.append(E.Private(remote, P.encode(P.private_prefix(user.name) + args[1])))
        hub.stats.messages_private += 1  # the deliveries count on the receiving node
        return
    if P.has_control(args[1]):
        raise ProtocolError(P.CONTROL_CHARS)
    hub.send_line(target, P.encode(P.private_prefix(user.name) + args[1]))
    hub.stats.messages_private += 1
    hub.stats.deliveries_private += 1


# exit
def exit_(hub: Hub, user: User, args: tuple[str, ...]) -> bool:
    hub.reply(user, P.BYE)
    return True


# history <group> [count]
def history(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    if not hub.history_size:
        raise ProtocolError(P.HISTORY_DISABLED)
    group = hub.visible_group(user, args[0])
    if group.key not in user.groups:
        raise ProtocolError(P.not_a_member(group.name))
    count = P.parse_count(args[1] if len(args) > 1 else None)
    if group.joined_history:  # only what was sent since this member's join
        count = min(count, group.seq - group.since.get(user.key, 0))
        if not count:
            hub.reply(user, P.end_of_history(group.name))
            return
    if hub.outbox is not None:  # the cluster's history is in Redis: read it there
        _need_cluster(hub)
        hub.commits.queries.append(HistoryQuery(user, group, count))
        return
    ring = group.history
    older = min(count, hub.history_size, group.seq) - len(ring)
    if older > 0 and hub.durable:
        # Memory no longer holds all of them: the writer reads the `older`
        # entries before the ring's oldest from the store, and answers with
        # them and this snapshot of the ring (what was sent before this command).
        hub.commits.queries.append(
            StoredQuery(user, group, group.seq - len(ring), older, list(ring)))
        return
    entries = list(ring)[-count:]
    for at, sender, text in entries:
        hub.reply(user, P.history_line(group.name, at, sender, text))
    hub.reply(user, P.end_of_history(group.name))


# help
def help_(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    hub.send_line(user, HELP)


# ping
def ping(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    hub.send_line(user, PONG)


# register <password> / password <old> <new> / token (PROTOCOL.md v2 Accounts).
# What needs argon2 or the disk is left in `hub.account_work` for the transport,
# which answers once it is done (the session's own greenlet waits, nobody else).
def register(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    book = _account_book(hub)
    if user.account is not None or book.get(user.name) is not None \
            or book.mode == A.Mode.REQUIRED:
        raise ProtocolError(P.already_registered_line(user.name))
    problem = A.password_problem(args[0])
    if problem is not None:
        raise ProtocolError(P.invalid_password_line(problem))
    hub.account_work.append(A.Register(user, user.name, args[0]))


def password(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    _account_book(hub)
    if user.account is None:
        raise ProtocolError(P.NOT_LOGGED_IN)
    hub.account_work.append(A.ChangePassword(user, user.name, args[0], args[1]))


def token(hub: Hub, user: User, args: tuple[str, ...]) -> None:
    book = _account_book(hub)
    account = book.accounts.get(user.account) if user.account is not None else None
    if account is None:
        raise ProtocolError(P.NOT_LOGGED_IN)
    hub.reply(user, P.token_line(book.mint(account, hub.clock())))


def _account_book(hub: Hub) -> A.AccountBook:
    if hub.accounts is None:
        raise ProtocolError(P.DISABLED)
    return hub.accounts


COMMANDS: dict[str, Command] = {command.word: command for command in (
    Command("create", P.Spec("create <group>", 1, 1), create),
    Command("join", P.Spec("join <group>", 1, 1), join),
    Command("leave", P.Spec("leave <group>", 1, 1), leave),
    Command("groups", P.Spec("groups", 0, 0), groups),
    Command("users", P.Spec("users", 0, 0), users),
    Command("public", P.Spec("public <group> <message>", 2, 2, text=True), public),
    Command("private", P.Spec("private <user> <message>", 2, 2, text=True), private),
    Command("exit", P.Spec("exit", 0, 0), exit_),
    Command("history", P.Spec("history <group> [count]", 1, 2), history),
    Command("help", P.Spec("help", 0, 0), help_),
    Command("ping", P.Spec("ping", 0, 0), ping),
    # Known in every mode; `--accounts off` answers `error: accounts are disabled`.
    Command("register", P.Spec("register <password>", 1, 1), register),
    Command("password", P.Spec("password <old> <new>", 2, 2), password),
    Command("token", P.Spec("token", 0, 0), token),
    # Group roles and moderation (PROTOCOL.md v2), handlers in moderation.py.
    Command("info", P.Spec("info <group>", 1, 1), M.info),
    Command("set", P.Spec("set <group> <key> <value>", 3, 3), M.set_),
    Command("mod", P.Spec("mod <group> <user>", 2, 2), M.mod),
    Command("unmod", P.Spec("unmod <group> <user>", 2, 2), M.unmod),
    Command("invite", P.Spec("invite <group> <user>", 2, 2), M.invite),
    Command("uninvite", P.Spec("uninvite <group> <user>", 2, 2), M.uninvite),
    Command("kick", P.Spec("kick <group> <user> [reason]", 2, 3, text=True), M.kick),
    Command("ban", P.Spec("ban <group> <user> [reason]", 2, 3, text=True), M.ban),
    Command("unban", P.Spec("unban <group> <user>", 2, 2), M.unban),
    Command("mute", P.Spec("mute <group> <user> [minutes]", 2, 3), M.mute),
    Command("unmute", P.Spec("unmute <group> <user>", 2, 2), M.unmute),
)}
"""Every command, in the order `help` lists them."""

WORDS = tuple(COMMANDS)
HELP = P.encode(P.help_line(WORDS))
PONG = P.encode(P.PONG)

"""The chat state: membership, fan-out, login/logout and `handle`, with no
sockets, clocks or threads.

The handlers themselves are plain functions in the command table
(`commands.py`); the groups awaiting the store live in `commits.py`, the other
nodes' users in `mirror.py`, the objects in `model.py`.

A handler appends encoded lines to the queues of the users who must receive
them and records those users in `Hub.dirty`; the transport drains `dirty`
once per loop turn and moves the bytes. Unit tests read the queues directly.

Hot path (`public`): the delivery line is encoded once and the same bytes
object is appended to every member's queue through cached bound `append`
methods; counters are plain integer adds, exported in bulk by `metrics`.

Durability (see `chatsrv.store`): the hub records what must be persisted and
the transport hands it to the store, the same way it drains `dirty`:
- `journal`: groups with history entries not yet written (`Group.unsaved`
  counts them; the entries themselves are the newest ones of the group's
  history ring, so a public message costs one integer add, no allocation);
- `commits` (see commits.py): groups a `create` reserved; they become
  visible, and their creator hears `ok: created group`, only once the store
  has them, and the commands blocked on them. Without a durable store
  (`durable=False`) the journal stays unused and `create` answers at once.

Limits (PROTOCOL.md "Limits every user lives within"): `create` counts every
group this hub knows (General, those reserved awaiting their commit, and in a
cluster those of every node) against `max_groups`, then spends a token of the
creator's address in `create_rate` (`createrate.py`). The `groups` reply is
encoded once and cached until the set of groups changes, so a burst of
`groups` appends one shared bytes object per request instead of sorting and
encoding the whole list each time.

History memory (`--history-memory`): every kept entry counts `entry_size`
bytes, and `history_order` lists one group per kept entry, oldest first. Over
the budget, `trim_history` pops the oldest record and evicts that group's
oldest entry: O(1) amortised per message, never a walk over the groups. Entries
the store does not have yet are never evicted. `history` asks for more than
the ring holds only when the store has it: it then records a `StoredQuery`
(commits.py), and the writer thread reads the older part (see store/writer.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter

from . import events as E
from . import moderation
from . import protocol as P
from .accounts import AccountBook, AccountWork
from .audit import MODERATION, AuditEntry
from .commands import COMMANDS, WORDS, parse
from .commits import Commits
from .createrate import CreateRate
from .errors import GroupPending, LoginRefused, ProtocolError
from .histogram import Histogram
from .mirror import Mirror
from .model import Conn, Entry, Group, RemoteUser, User, entry_size
from .names import reserved, skeleton

COMPACT_MIN = 4096


@dataclass
class Stats:
    """Plain counters; `metrics` exports them at scrape time."""

    messages_public: int = 0
    messages_private: int = 0
    deliveries_public: int = 0
    deliveries_private: int = 0
    notices: int = 0
    logins: int = 0
    announcements: int = 0
    commands: dict[str, int] = field(default_factory=dict)
    # chatsrv_moderation_total{action}: changes made by moderation commands (users'
    # and the admin API's).
    moderation: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODERATION, 0))
    # Seconds from a `public` line's parse to its last enqueue, and to handle a
    # username line that logs in; filled only when the hub has a timer.
    fanout: Histogram = field(default_factory=Histogram)
    login: Histogram = field(default_factory=Histogram)


class Hub:
    """Users, groups and membership; one instance per server process."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        history: int = 1000,
        notice_limit: int = 1000,
        timer: Callable[[], float] | None = None,
        durable: bool = False,
        max_groups: int = 10000,
        create_rate: CreateRate | None = None,
        history_memory: int = 256 << 20,
        accounts: AccountBook | None = None,
        group_creation: str = "all",
    ) -> None:
        self.clock = clock
        # `--group-creation`: who may `create` (all, accounts, admins).
        self.group_creation = group_creation
        # PROTOCOL.md v2 Accounts; None is `--accounts off`. What needs a hash or
        # the disk (`register`, `password`) waits in `account_work` for the transport.
        self.accounts = accounts if accounts is not None and accounts.enabled else None
        self.account_work: list[AccountWork] = []
        # Group roles changed with a durable store: (actor, group, reply, None), the
        # reply queued once the group's roles are stored (the transport's job); in a
        # cluster (actor, group, reply, change): the change is made once Redis has
        # it (see moderation.py).
        self.roles_work: list[tuple[User, Group, str, moderation.Change | None]] = []
        # The audit hook: changes made by moderation commands, oldest first, drained
        # by the transport into the store (see audit.py).
        self.audit: list[AuditEntry] = []
        # A monotonic clock for the latency histograms; None = not measured.
        self.timer = timer
        self.history_size = history
        # `--history-memory`: the bytes all groups' rings may hold together (see
        # `entry_size`). Past it the oldest entries of the whole server leave memory
        # first; one group per kept entry in `history_order`, oldest first, makes
        # that O(1) per message whatever the number of groups.
        self.history_budget = history_memory
        self.history_bytes = 0
        self.history_order: deque[Group] = deque()
        self.history_stale = 0  # records in history_order of entries already dropped
        self.compact_at = COMPACT_MIN  # compact history_order past this many stale records
        self.notice_limit = notice_limit
        self.durable = durable
        self.max_groups = max_groups
        self.create_rate = create_rate  # None = off
        self.users: dict[str, User] = {}
        self.groups: dict[str, Group] = {}
        self._groups_line: bytes | None = None  # the encoded `groups` reply, until a change
        # Groups with `visibility private`: while none, `groups` is the cached line.
        self.private_groups = 0
        self.dirty: set[User] = set()
        # What the transport must persist (only with a durable store).
        self.journal: list[Group] | None = [] if durable and history else None
        # Groups awaiting their commit, commands blocked on them, reads awaiting
        # the store or Redis (see commits.py).
        self.commits = Commits(self)
        # Look-alike names (PROTOCOL.md v2): skeleton (names.py) -> the user (here
        # or, mirrored, on another node) or group (existing or reserved) that has
        # it. An entry counts only while its holder is still registered under its
        # key (see `user_lookalike`), so a missed removal never refuses a free name.
        self.user_skels: dict[str, User | RemoteUser] = {}
        self.group_skels: dict[str, Group] = {}
        self.stats = Stats()
        self.stats.commands = {w: 0 for w in (*WORDS, "unknown")}
        # Cluster mode (see `join_cluster`); without it these stay empty and None.
        self.node = ""
        self.outbox: list[E.Event] | None = None  # what other nodes must hear, drained per turn
        self.unavailable = False  # Redis unreachable: commands needing it answer an error
        # Redis unreachable and the public messages held for it at their limit
        # (backplane/publisher.py HOLD_MAX): `public` answers an error, not a drop.
        self.held_full = False
        # Other nodes' users and memberships (see mirror.py); `remote_users` is the
        # mirror's dict, and the backplane calls the mirror through the bound
        # methods below (thin delegations, one attribute lookup, no extra frame).
        mirror = self.mirror = Mirror(self)
        self.remote_users = mirror.users
        self.unconfirmed = mirror.unconfirmed  # the same set: the mirror never rebinds it
        self.remote_login = mirror.login
        self.remote_logout = mirror.logout
        self.forget_remote = mirror.forget
        self.remote_join = mirror.join
        self.remote_leave = mirror.leave
        self.remote_public = mirror.public
        self.remote_private = mirror.private
        self.remote_group = mirror.group
        self.remote_group_deleted = mirror.group_deleted
        self.remote_removed = mirror.removed
        self.join_confirmed = mirror.join_confirmed
        self.node_gone = mirror.node_gone
        self.node_state = mirror.node_state
        self.add_group(P.GENERAL, created_by="")

    def join_cluster(self, node: str) -> None:
        """Cluster mode: record events for other nodes in `outbox` (the backplane drains
        it once per loop turn, like `dirty`) and mirror the users of the other nodes."""
        self.node = node
        self.outbox = []
        self.journal = None  # history goes to Redis with the message (the backplane's job)

    # ------------------------------------------------------------ delivery

    def reply(self, user: User, line: str) -> None:
        user.push(P.encode(line))
        self.dirty.add(user)

    def send_line(self, user: User, data: bytes) -> None:
        user.push(data)
        self.dirty.add(user)

    def fanout(self, group: Group, data: bytes, skip: User | None) -> int:
        """Append `data` to every member but `skip`; return the number of receivers."""
        own = skip.push if skip is not None else None
        for push in group.pushes():
            if push is not own:
                push(data)
        self.dirty.update(group.members.values())
        return len(group.members) - (skip is not None and skip.key in group.members)

    def notice(self, group: Group, line: str, skip: User | None) -> None:
        """Join/leave notices, suppressed in crowds so arrivals cost O(N), not O(N^2)."""
        if self.notice_limit and group.size() + (
            skip is not None and skip.key not in group.members
        ) > self.notice_limit:
            return
        self.stats.notices += self.fanout(group, P.encode(line), skip)

    # ------------------------------------------------------------ groups

    def add_group(self, name: str, created_by: str) -> Group:
        group = Group(name, created_by, self.clock(), self.history_size)
        self.groups[group.key] = group
        self._groups_line = None
        self.hold_group_skel(group)
        return group

    # Look-alike names: who holds each skeleton.

    def group_lookalike(self, skel: str) -> Group | None:
        """The existing or reserved group whose name looks like one with this skeleton."""
        other = self.group_skels.get(skel)
        if other is None:
            return None
        if self.groups.get(other.key) is other or self.commits.reserved.get(other.key) is other:
            return other
        del self.group_skels[skel]
        return None

    def hold_group_skel(self, group: Group) -> None:
        """`group` exists (or is reserved): its skeleton is taken, unless another
        group already holds it (groups of older data directories or nodes)."""
        if self.group_lookalike(group.skel) is None:
            self.group_skels[group.skel] = group

    def forget_group_skel(self, group: Group) -> None:
        if self.group_skels.get(group.skel) is group:
            del self.group_skels[group.skel]

    def user_lookalike(self, skel: str) -> User | RemoteUser | None:
        """The user here, or mirrored from another node, whose name has this skeleton."""
        other = self.user_skels.get(skel)
        if other is None:
            return None
        if self.users.get(other.key) is other or self.remote_users.get(other.key) is other:
            return other
        del self.user_skels[skel]
        return None

    def hold_user_skel(self, user: User | RemoteUser) -> None:
        if self.user_lookalike(user.skel) is None:
            self.user_skels[user.skel] = user

    def forget_user_skel(self, user: User | RemoteUser) -> None:
        if self.user_skels.get(user.skel) is user:
            del self.user_skels[user.skel]

    def groups_changed(self) -> None:
        """The set of groups changed: the cached `groups` reply is stale."""
        self._groups_line = None

    def groups_line(self) -> bytes:
        """The encoded `groups: ...` reply, built once per change of the set of groups
        (every change goes through `add_group`, `remove_group` or `commits`)."""
        line = self._groups_line
        if line is None:
            line = self._groups_line = P.encode(
                P.listing("groups", [g.name for g in self.groups.values()]))
        return line

    # The durable-create bookkeeping lives in `commits`; the server's admin
    # create and delete call these.

    def reserve_group(self, name: str, created_by: str) -> Group:
        return self.commits.reserve(name, created_by)

    def group_committed(self, group: Group, creator: User | None) -> None:
        self.commits.committed(group, creator)

    def put_back_group(self, group: Group) -> None:
        self.commits.put_back(group)

    def remove_group(self, group: Group) -> None:
        """An administrator deleted `group` (here, or on another node): the local
        members hear `* group <group> was deleted by an administrator` and are out
        of it, without leave notices; the name is free again. The caller makes it
        durable (see `ChatServer.delete_group`)."""
        data = P.encode(P.group_deleted(group.name))
        gkey = group.key
        for user in group.members.values():
            del user.groups[gkey]
            self.send_line(user, data)
        self.stats.notices += len(group.members)
        group.clear()
        self.mirror.group_removed(group)
        del self.groups[gkey]
        if group.private:
            self.private_groups -= 1
        self.forget_group_skel(group)
        self._groups_line = None
        if group.unsaved and self.journal is not None:  # its history goes with it
            self.journal.remove(group)
        group.unsaved = 0
        self._forget_history(group)
        if self.outbox is not None:  # the backplane leaves the group's channel
            self.outbox.append(E.Unfollow(group))

    def restore_group(
        self, name: str, created_by: str, created_at: float, entries: Iterable[Entry],
        total: int = 0,
    ) -> Group:
        """Put back a group the store kept (General included) with its recent history.

        `total`: entries the store holds for the group, of which `entries` are the
        newest (fewer when the memory budget did not let more be loaded)."""
        group = self.groups.get(P.name_key(name))
        if group is None:
            group = self.add_group(name, created_by)
        group.created_by = created_by
        group.created_at = created_at
        kept = list(entries)[-self.history_size:] if self.history_size else []
        group.history.extend(kept)
        group.seq = max(total, len(kept))
        self.history_bytes += sum(map(entry_size, kept))
        self.history_order.extend([group] * len(kept))
        return group

    def restore_roles(self, name: str, data: str) -> None:
        """Put back a group's roles and moderation the store kept (start-up)."""
        group = self.groups.get(P.name_key(P.normalize(name)))
        if group is None:
            return
        if group.private:
            self.private_groups -= 1
        moderation.restore(group, data)
        if group.private:
            self.private_groups += 1

    def restored(self) -> None:
        """After `restore_group` for every kept group: evict by age, not by group."""
        ages = [(at, group) for group in self.groups.values() for at, _, _ in group.history]
        ages.sort(key=itemgetter(0))  # stable: each group's records stay in ring order
        self.history_order = deque(group for _, group in ages)
        self.history_stale = 0
        self.trim_history()

    # ------------------------------------------------------------ history in memory

    def _forget_history(self, group: Group) -> None:
        """A deleted group's entries leave the budget at once; their records in
        `history_order` go stale (skipped by eviction, dropped by compaction)."""
        ring = group.history
        if ring:
            self.history_bytes -= sum(map(entry_size, ring))
            group.skip += len(ring)
            self.history_stale += len(ring)
            ring.clear()
            if self.history_stale > self.compact_at:
                self.compact_order()

    def resize_history(self, size: int) -> None:
        """`--history` changed by a reload (both sizes non-zero; turning history on
        or off needs a restart): every group's ring takes the new size, a smaller
        one dropping its oldest entries as an append past the size would. O(entries)."""
        if not size or not self.history_size:
            raise ValueError("history cannot be turned on or off without a restart")
        for group in self.groups.values():
            ring = group.history
            drop = max(0, len(ring) - size)
            for _ in range(drop):
                self.history_bytes -= entry_size(ring.popleft())
            group.skip += drop  # their records in history_order go stale
            self.history_stale += drop
            group.history = deque(ring, maxlen=size)
        self.history_size = size
        if self.history_stale > self.compact_at:
            self.compact_order()

    def trim_history(self) -> None:
        """Evict the server's oldest saved entries until within `--history-memory`.

        An entry the store does not have yet (`unsaved`, `pending`: always a
        group's newest) is never evicted; if the oldest one is such, so are all
        newer ones, and the writer calls this again after its next commit."""
        order = self.history_order
        budget = self.history_budget
        while self.history_bytes > budget and order:
            group = order.popleft()
            if group.skip:
                group.skip -= 1
                self.history_stale -= 1
                continue
            ring = group.history
            if not ring:
                continue
            if len(ring) <= group.unsaved + group.pending:
                order.appendleft(group)
                return
            self.history_bytes -= entry_size(ring.popleft())

    def compact_order(self) -> None:
        """Drop the records of entries the rings dropped; amortised O(1) per message
        (run once they outnumber the live records of the last compaction)."""
        fresh: deque[Group] = deque()
        for group in self.history_order:
            if group.skip:
                group.skip -= 1
            else:
                fresh.append(group)
        self.history_order = fresh
        self.history_stale = 0
        self.compact_at = max(COMPACT_MIN, len(fresh))

    def take_unsaved(self) -> list[tuple[Group, list[Entry]]]:
        """The history entries not yet persisted, per group, oldest first; forgets them.

        They stay `pending` (not evicted from memory) until `history_saved` or
        `unsaved_again`. Entries that already fell out of the ring are not
        returned: the store keeps the same last `--history` messages and would
        drop them anyway."""
        groups, self.journal = self.journal, []
        batch = []
        for group in groups or ():
            ring = group.history
            n = min(group.unsaved, len(ring))
            group.unsaved = 0
            group.pending = n
            if n:
                batch.append((group, list(islice(ring, len(ring) - n, None))))
        return batch

    def history_saved(self, batch: list[tuple[Group, list[Entry]]]) -> None:
        """The store committed `batch`: its entries may leave memory now."""
        for group, _ in batch:
            group.pending = 0
        self.trim_history()

    def unsaved_again(self, batch: list[tuple[Group, list[Entry]]]) -> None:
        """A write failed: mark its entries unsaved so the next flush retries them."""
        journal = self.journal
        assert journal is not None  # the batch came from the journal (take_unsaved)
        for group, entries in batch:
            if self.groups.get(group.key) is not group:  # deleted meanwhile
                continue
            group.pending = 0
            if not group.unsaved:
                journal.append(group)
            group.unsaved += len(entries)

    def unsaved_count(self) -> int:
        """History entries the store does not have (logged as lost if it never will)."""
        return sum(min(g.unsaved, len(g.history)) + g.pending for g in self.groups.values())

    def find_group(self, name: str) -> Group:
        key = P.name_key(P.normalize(name))
        group = self.groups.get(key)
        if group is None:
            reserved = self.commits.reserved.get(key)
            if reserved is not None:
                raise GroupPending(reserved)
            raise ProtocolError(P.no_such_group(name))
        return group

    def visible_group(self, user: User, name: str) -> Group:
        """`find_group`, but a private group `user` may not see does not exist."""
        group = self.find_group(name)
        if group.private and not group.sees(user):
            raise ProtocolError(P.no_such_group(name))
        return group

    def groups_for(self, user: User) -> bytes:
        """The `groups` reply for `user`: private groups only where it sees them."""
        if not self.private_groups:
            return self.groups_line()
        return P.encode(P.listing(
            "groups", [g.name for g in self.groups.values() if not g.private or g.sees(user)]))

    def member_group(self, user: User, name: str) -> Group:
        group = self.find_group(name)
        if group.key not in user.groups:
            raise ProtocolError(P.not_a_member(group.name))
        return group

    def join_group(self, user: User, group: Group, publish: bool = True) -> None:
        group.add(user)
        user.groups[group.key] = group
        group.since[user.key] = group.seq  # for `history joined`
        self.notice(group, P.joined_notice(user.name, group.name), user)
        if self.outbox is not None and publish:
            self.outbox.append(E.Join(user, group))
            self.mirror.unconfirmed.add((user.key, group.key))

    def leave_group(self, user: User, group: Group) -> None:
        # Notices go to the remaining members; the crowd size counts the leaver.
        self.notice(group, P.left_notice(user.name, group.name), user)
        self.drop_member(user, group)

    def drop_member(self, user: User, group: Group, publish: bool = True) -> None:
        """`user` is out of `group`, without a notice (`leave_group`, `remove_member`)."""
        group.remove(user)
        del user.groups[group.key]
        if self.outbox is not None:
            if publish:
                self.outbox.append(E.Leave(user, group))
            self.mirror.unconfirmed.discard((user.key, group.key))

    def remove_member(self, user: User, group: Group, actor: str, reason: str | None) -> None:
        """`kick`/`ban` by `actor` (a name): `user` is out of `group` now (nothing it
        sends later reaches the group), it hears so, and so do the remaining members
        here other than the actor; in a cluster the other nodes tell theirs
        (`E.Removed`, in order after everything `user` sent before)."""
        self.drop_member(user, group, publish=False)
        self.reply(user, P.removed_you(actor, group.name, reason))
        data = P.encode(P.removed_notice(user.name, group.name, actor))
        self.stats.notices += self.fanout(group, data, self.users.get(P.name_key(actor)))
        if self.outbox is not None:
            self.outbox.append(E.Removed(user.key, user.name, group.key, actor, True, group))

    # Cluster mode: role changes and removals other nodes asked for (the backplane
    # calls these; see moderation.py).

    def remote_roles(self, gkey: str, version: int, field: str | None, value: str | None,
                     actor: str, target: str | None, notice: str | None,
                     reason: str | None) -> None:
        moderation.remote_change(self, gkey, version, field, value, actor, target, notice,
                                 reason)

    def reload_roles(self, gkey: str, fields: dict[str, str]) -> None:
        group = self.groups.get(gkey)
        if group is not None:
            moderation.replace(self, group, fields)

    def remove_request(self, gkey: str, key: str, actor: str, reason: str | None) -> None:
        """Another node's moderator kicks `key` out of `gkey`: removed if it is a
        member here; else the answer says it was not (for the waiting node)."""
        group = self.groups.get(gkey)
        user = self.users.get(key)
        if group is not None and user is not None and group.members.get(key) is user:
            self.remove_member(user, group, actor, reason)
        elif self.outbox is not None:
            self.outbox.append(E.Removed(key, key, gkey, actor, False, None))

    # ------------------------------------------------------------ sessions

    def login(self, name: str, conn: Conn | None = None, announced: bool = False,
              addr: str | None = None, account: str | None = None) -> User:
        """Register a user, put it in General; raises LoginRefused.

        `announced`: cluster mode, the claim already told every node (login and
        joining General in one event, see backplane/publisher.py). `addr`: the
        client's address key, which `--create-rate` counts."""
        started = self.timer() if self.timer is not None else 0.0
        nfc, skel = self._check_name(name)
        user = User(nfc, conn, self.clock(), addr, account, skel)
        self.users[user.key] = user
        self.user_skels[skel] = user
        self.stats.logins += 1
        self.reply(user, P.welcome(nfc))
        general = self.groups[P.name_key(P.GENERAL)]
        self.join_group(user, general, publish=not announced)
        self.reply(user, P.you_joined(general.name))
        if self.timer is not None:
            self.stats.login.observe(self.timer() - started)
        return user

    def check_name(self, name: str) -> str:
        """The NFC username of a login line if it is valid and free here; raises LoginRefused."""
        return self._check_name(name)[0]

    def _check_name(self, name: str) -> tuple[str, str]:
        """`check_name`, and the name's skeleton."""
        nfc = P.normalize(name.strip(P.SEPARATORS))
        problem = P.name_problem(nfc)
        if problem is not None:
            raise LoginRefused(P.invalid_username(problem))
        # In a cluster, Redis decides about the names of other nodes' users (the
        # mirror may still show one that just left): see `Backplane.claim`.
        key = P.name_key(nfc)
        if key in self.users:
            raise LoginRefused(P.username_taken(nfc))
        # A look-alike of a user here or (as the mirror knows them) on another node;
        # the very same name on another node is Redis's to decide, as above.
        skel = skeleton(nfc)
        if reserved(skel):  # the administrators' name (names.RESERVED)
            raise LoginRefused(P.username_taken(nfc))
        other = self.user_lookalike(skel)
        if other is not None and other.key != key:
            raise LoginRefused(P.username_taken(nfc))
        return nfc, skel

    def logout(self, user: User, notify: bool = True) -> None:
        """The user leaves every group (with notices) and the name is free at once."""
        if self.users.get(user.key) is not user:
            return
        for group in list(user.groups.values()):
            if notify:
                self.leave_group(user, group)
            else:
                group.remove(user)
                if self.outbox is not None:  # other nodes still tell their members
                    self.outbox.append(E.Leave(user, group))
        user.groups.clear()
        del self.users[user.key]
        self.forget_user_skel(user)
        self.dirty.discard(user)
        if self.outbox is not None:
            self.outbox.append(E.Logout(user))

    # ------------------------------------------------------------ commands

    def handle(self, user: User, line: str) -> bool:
        """Run one decoded line from a logged-in user; True means end the session."""
        timer = self.timer
        started = timer() if timer is not None else 0.0
        try:
            parsed = parse(line)
        except ProtocolError as err:
            self._count(line)
            self.reply(user, str(err))
            return False
        if parsed is None:
            return False
        command, args = parsed
        word = command.word
        self.stats.commands[word] += 1
        try:
            done = command.run(self, user, args)
        except ProtocolError as err:
            self.reply(user, str(err))
            return False
        except GroupPending as pending:
            self.stats.commands[word] -= 1  # counted when it runs again
            self.commits.blocked.append((user, pending.group, line))
            return False
        if word == "public" and timer is not None:
            self.stats.fanout.observe(timer() - started)
        return bool(done)

    def _count(self, line: str) -> None:
        word = P.split_word(line.lstrip(P.SEPARATORS))[0].lower()
        key = word if word in COMMANDS else "unknown"
        self.stats.commands[key] += 1

    # ------------------------------------------------------------ administration

    def announce(self, text: str, group_name: str | None = None) -> int:
        """`* announcement: <text>` to a group's members or to everyone; returns receivers."""
        if not text or P.has_control(text):
            raise ProtocolError(P.BAD_ANNOUNCEMENT)
        data = P.encode(P.announcement(text))
        if group_name is not None:
            group = self.find_group(group_name)
            self.stats.announcements += 1
            return self.fanout(group, data, None)
        self.stats.announcements += 1
        for user in self.users.values():
            self.send_line(user, data)
        return len(self.users)


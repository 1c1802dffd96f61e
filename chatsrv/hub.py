"""The chat state and one handler per command, with no sockets, clocks or threads.

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
- `uncommitted`: groups a `create` reserved; they become visible, and their
  creator hears `ok: created group`, only when `group_committed` says the store
  has them. Without a durable store (`durable=False`) both stay unused and
  `create` answers at once.
- `blocked`: commands that named a group still awaiting its commit (a second
  `create`, a `join`); the transport runs them again once it is settled, so
  nobody hears "already exists" about a group that `join` cannot find yet.

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
the ring holds only when the store has it: it then records a ("stored", ...)
query, and the writer thread reads the older part (see store/writer.py).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from operator import attrgetter, itemgetter
from typing import Any, Protocol

from . import protocol as P
from .core import events as E
from .core.events import new_public
from .createrate import CreateRate
from .histogram import Histogram
from .protocol import ProtocolError

GENERAL = P.GENERAL


class Conn(Protocol):
    """What the layers outside the transport use of a user's connection (the
    transport's Session): the per-turn flush writes to it, the backplane reads its
    peer address. None for users without one (tests, internal users)."""

    peer: str

    def write(self, data: bytes) -> None: ...


# A reply waiting for the store or Redis (`Hub.queries`); the last field depends on
# the kind: ("history", user, group, count), ("join", user, group, None),
# ("stored", user, group, (before, count, kept entries)).
Query = tuple[str, "User", "Group", Any]


class User:
    """A logged-in session as the hub sees it. `conn` belongs to the transport."""

    __slots__ = ("name", "key", "groups", "queue", "push", "conn", "since", "addr")

    def __init__(self, name: str, conn: Conn | None = None, since: float = 0.0,
                 addr: str | None = None) -> None:
        self.name = name
        self.key = P.name_key(name)
        self.groups: dict[str, Group] = {}
        self.queue: list[bytes] = []
        # One bound method for the user's life: groups cache it, and fan-out
        # skips the sender by identity.
        self.push = self.queue.append
        self.conn: Conn | None = conn
        self.since = since
        # The client's address as `--create-rate` counts it (limits.address_key);
        # None (tests, internal users) is not rate-limited.
        self.addr = addr

    def __repr__(self) -> str:
        return f"User({self.name!r})"


class RemoteUser:
    """Cluster mode: a user logged in on another node, as this node's mirror knows it."""

    __slots__ = ("name", "key", "node", "since", "peer", "groups")

    def __init__(self, name: str, node: str, since: float, peer: str = "") -> None:
        self.name = name
        self.key = P.name_key(name)
        self.node = node
        self.since = since
        self.peer = peer
        self.groups: set[str] = set()  # group keys


_PUSH = attrgetter("push")

Entry = tuple[float, str, str]
"""A history entry: (UTC time in seconds, sender as logged in, message text)."""

ENTRY_OVERHEAD = 160
"""Bytes a history entry costs beyond its text and the characters of its sender,
for the `--history-memory` budget. Measured with tracemalloc on CPython 3.11
(100,000 entries, bench/history_memory.py --overhead): 104 bytes with the
sender shared (the 3-tuple 64, the float 24, the ring's slot 8, the eviction
order's slot 8); entries loaded from the store each own their sender string,
whose header is 49-56 bytes more. 160 covers both; the text is counted with
`sys.getsizeof` (49 bytes + 1, 2 or 4 per character)."""

_sizeof = sys.getsizeof
COMPACT_MIN = 4096


def entry_size(entry: Entry) -> int:
    """What one history entry counts against `--history-memory`."""
    return _sizeof(entry[2]) + len(entry[1]) + ENTRY_OVERHEAD


class Group:
    __slots__ = (
        "name", "key", "members", "created_by", "created_at", "history", "unsaved", "_pushes",
        "remote", "seq", "pending", "skip",
    )

    def __init__(self, name: str, created_by: str, created_at: float, history: int) -> None:
        self.name = name
        self.key = P.name_key(name)
        self.members: dict[str, User] = {}
        self.created_by = created_by
        self.created_at = created_at
        self.history: deque[Entry] = deque(maxlen=history)
        self.unsaved = 0  # newest history entries not yet handed to the store
        self.pending = 0  # the entries before those: handed to the store, not committed yet
        # Entries ever kept (those loaded at start included): the ring holds the
        # newest, numbered seq - len(history) .. seq - 1; the store numbers alike.
        self.seq = 0
        # Records of this group at the front of `Hub.history_order` whose entry
        # the ring already dropped (past `--history`): skipped by eviction.
        self.skip = 0
        self._pushes: list | None = None
        # Cluster mode: members on other nodes, key -> display name (see `RemoteUser`).
        self.remote: dict[str, str] = {}

    def add(self, user: User) -> None:
        self.members[user.key] = user
        # Appending keeps a crowd filling up O(N) overall; a rebuild per join was
        # O(N^2) (seen in the connect profile: 1,000 logins into General).
        if self._pushes is not None:
            self._pushes.append(user.push)

    def remove(self, user: User) -> None:
        del self.members[user.key]
        self._pushes = None

    def size(self) -> int:
        """Members on every node (the local ones alone without a cluster)."""
        return len(self.members) + len(self.remote)

    def pushes(self) -> list:
        """Members' queue appenders, rebuilt only after a membership change."""
        if self._pushes is None:
            self._pushes = list(map(_PUSH, self.members.values()))
        return self._pushes


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
    # Seconds from a `public` line's parse to its last enqueue, and to handle a
    # username line that logs in; filled only when the hub has a timer.
    fanout: Histogram = field(default_factory=Histogram)
    login: Histogram = field(default_factory=Histogram)


class GroupExists(ProtocolError):
    """`create` of a name already taken (the admin API answers 409, not 400)."""


class TooManyGroups(ProtocolError):
    """`create` beyond `--max-groups` (the admin API answers 409: delete some first)."""


class CreateFailed(Exception):
    """The store could not commit a new group (the text is the `error:` line)."""


class DeleteFailed(Exception):
    """The store (or Redis) could not delete a group (the text is the error)."""


class LoginRefused(Exception):
    """The name cannot be used; the text is the `error: ...` line."""


class GroupTaken(Exception):
    """Cluster mode: another node created a group of that name first."""


class ClusterUnavailable(Exception):
    """Cluster mode: Redis cannot be reached; the client hears `error: cluster unavailable`."""


class GroupPending(Exception):
    """The command names a group whose creation awaits the store: decide it later."""

    def __init__(self, group: Group) -> None:
        super().__init__(group.name)
        self.group = group


Handler = Callable[["Hub", User, tuple[str, ...]], bool | None]


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
    ) -> None:
        self.clock = clock
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
        self._compact_at = COMPACT_MIN  # compact history_order past this many stale records
        self.notice_limit = notice_limit
        self.durable = durable
        self.max_groups = max_groups
        self.create_rate = create_rate  # None = off
        self.users: dict[str, User] = {}
        self.groups: dict[str, Group] = {}
        self._groups_line: bytes | None = None  # the encoded `groups` reply, until a change
        self.dirty: set[User] = set()
        # What the transport must persist (only with a durable store).
        self.journal: list[Group] | None = [] if durable and history else None
        self.uncommitted: list[tuple[User | None, Group]] = []
        self.blocked: list[tuple[User, Group, str]] = []
        self.reserved: dict[str, Group] = {}  # created, awaiting commit, not visible yet
        self.stats = Stats()
        self.stats.commands = {w: 0 for w in (*P.COMMAND_WORDS, "unknown")}
        # Cluster mode (see `join_cluster`); without it these stay empty and None.
        self.node = ""
        self.outbox: list[E.Event] | None = None  # what other nodes must hear, drained per turn
        self.remote_users: dict[str, RemoteUser] = {}
        self.unavailable = False  # Redis unreachable: commands needing it answer an error
        # Replies that wait for Redis: ("history", user, group, count) reads, and
        # ("join", user, group, None) when this node must first follow the group.
        self.queries: list[Query] = []
        # Local joins whose event has not come back from Redis yet: a remote join or
        # leave ordered before it in Redis is not this member's news (see remote_notice).
        self.unconfirmed: set[tuple[str, str]] = set()
        self.add_group(GENERAL, created_by="")

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
        return group

    def check_new_group(self, name: str) -> str:
        """The NFC name of a group that may be created now; raises ProtocolError with
        the `create` errors of PROTOCOL.md in its order: invalid name, exists (or
        GroupPending: decided once that commit is), too many groups."""
        name = P.normalize(name)
        problem = P.name_problem(name)
        if problem is not None:
            raise ProtocolError(P.invalid_group_name(problem))
        key = P.name_key(name)
        existing = self.groups.get(key)
        if existing is not None:
            raise GroupExists(P.group_exists(existing.name))
        if key in self.reserved:
            raise GroupPending(self.reserved[key])
        if len(self.groups) + len(self.reserved) >= self.max_groups:
            raise TooManyGroups(P.too_many_groups(self.max_groups))
        return name

    def reserve_group(self, name: str, created_by: str, checked: bool = False) -> Group:
        """Hold a new group's name until the store commits the group; raises the
        errors of `check_new_group` unless the caller just ran it (`checked`)."""
        if not checked:
            name = self.check_new_group(name)
        group = Group(name, created_by, self.clock(), self.history_size)
        self.reserved[group.key] = group
        return group

    def group_committed(self, group: Group, creator: User | None) -> None:
        """The store has `group`: it exists from now on, and its creator hears so."""
        del self.reserved[group.key]
        self.groups[group.key] = group
        self._groups_line = None
        if creator is not None and self.users.get(creator.key) is creator:
            self.reply(creator, P.created(group.name))

    def group_not_committed(self, group: Group, creator: User | None,
                            line: str | None = None) -> None:
        """The store failed (or, in a cluster, another node has the name): the name
        is free again here, the creator is told (`line`, or the storage error) and
        gets its `--create-rate` token back: only groups created count."""
        del self.reserved[group.key]
        if creator is not None and creator.addr is not None and self.create_rate is not None:
            self.create_rate.refund(creator.addr)
        if creator is not None and self.users.get(creator.key) is creator:
            self.reply(creator, line or P.storage_failed(group.name))

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
        group.members.clear()
        group._pushes = None
        for key in group.remote:
            remote = self.remote_users.get(key)
            if remote is not None:
                remote.groups.discard(gkey)
        group.remote.clear()
        del self.groups[gkey]
        self._groups_line = None
        if group.unsaved and self.journal is not None:  # its history goes with it
            self.journal.remove(group)
        group.unsaved = 0
        self._forget_history(group)
        if self.unconfirmed:
            self.unconfirmed = {p for p in self.unconfirmed if p[1] != gkey}
        if self.outbox is not None:  # the backplane leaves the group's channel
            self.outbox.append(E.Unfollow(group))

    def put_back_group(self, group: Group) -> None:
        """Deleting `group` failed in the store: it exists again (without the members
        it lost), as the store still has it."""
        if group.key not in self.groups:
            self.groups[group.key] = group
            self._groups_line = None

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
            if self.history_stale > self._compact_at:
                self._compact_order()

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
        if self.history_stale > self._compact_at:
            self._compact_order()

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

    def _compact_order(self) -> None:
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
        self._compact_at = max(COMPACT_MIN, len(fresh))

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
            if key in self.reserved:
                raise GroupPending(self.reserved[key])
            raise ProtocolError(P.no_such_group(name))
        return group

    def member_group(self, user: User, name: str) -> Group:
        group = self.find_group(name)
        if group.key not in user.groups:
            raise ProtocolError(P.not_a_member(group.name))
        return group

    def join_group(self, user: User, group: Group, publish: bool = True) -> None:
        group.add(user)
        user.groups[group.key] = group
        self.notice(group, P.joined_notice(user.name, group.name), user)
        if self.outbox is not None and publish:
            self.outbox.append(E.Join(user, group))
            self.unconfirmed.add((user.key, group.key))

    def leave_group(self, user: User, group: Group) -> None:
        # Notices go to the remaining members; the crowd size counts the leaver.
        self.notice(group, P.left_notice(user.name, group.name), user)
        group.remove(user)
        del user.groups[group.key]
        if self.outbox is not None:
            self.outbox.append(E.Leave(user, group))
            self.unconfirmed.discard((user.key, group.key))

    # ------------------------------------------------------------ sessions

    def login(self, name: str, conn: Conn | None = None, announced: bool = False,
              addr: str | None = None) -> User:
        """Register a user, put it in General; raises LoginRefused.

        `announced`: cluster mode, the claim already told every node (login and
        joining General in one event, see backplane/publisher.py). `addr`: the
        client's address key, which `--create-rate` counts."""
        started = self.timer() if self.timer is not None else 0.0
        nfc = self.check_name(name)
        key = P.name_key(nfc)
        user = User(nfc, conn, self.clock(), addr)
        self.users[key] = user
        self.stats.logins += 1
        self.reply(user, P.welcome(nfc))
        general = self.groups[P.name_key(GENERAL)]
        self.join_group(user, general, publish=not announced)
        self.reply(user, P.you_joined(general.name))
        if self.timer is not None:
            self.stats.login.observe(self.timer() - started)
        return user

    def check_name(self, name: str) -> str:
        """The NFC username of a login line if it is valid and free here; raises LoginRefused."""
        nfc = P.normalize(name.strip(P.SEPARATORS))
        problem = P.name_problem(nfc)
        if problem is not None:
            raise LoginRefused(P.invalid_username(problem))
        # In a cluster, Redis decides about the names of other nodes' users (the
        # mirror may still show one that just left): see `Backplane.claim`.
        if P.name_key(nfc) in self.users:
            raise LoginRefused(P.username_taken(nfc))
        return nfc

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
        self.dirty.discard(user)
        if self.outbox is not None:
            self.outbox.append(E.Logout(user))

    # ------------------------------------------------------------ commands

    def handle(self, user: User, line: str) -> bool:
        """Run one decoded line from a logged-in user; True means end the session."""
        timer = self.timer
        started = timer() if timer is not None else 0.0
        try:
            command = P.parse_line(line)
        except ProtocolError as err:
            self._count(line)
            self.reply(user, str(err))
            return False
        if command is None:
            return False
        word = command.word
        self.stats.commands[word] += 1
        try:
            done = HANDLERS[word](self, user, command.args)
        except ProtocolError as err:
            self.reply(user, str(err))
            return False
        except GroupPending as pending:
            self.stats.commands[word] -= 1  # counted when it runs again
            self.blocked.append((user, pending.group, line))
            return False
        if word == "public" and timer is not None:
            self.stats.fanout.observe(timer() - started)
        return bool(done)

    def _count(self, line: str) -> None:
        word = P.split_word(line.lstrip(P.SEPARATORS))[0].lower()
        key = word if word in self.stats.commands else "unknown"
        self.stats.commands[key] += 1

    # create <group>
    # With a durable store the reply waits for the commit: the transport drains
    # `uncommitted` right after this call and answers through `group_committed`.
    def handle_create(self, user: User, args: tuple[str, ...]) -> None:
        self._need_cluster()
        name = self.check_new_group(args[0])
        limiter = self.create_rate
        if limiter is not None and user.addr is not None and not limiter.take(user.addr):
            raise ProtocolError(P.CREATING_TOO_FAST)
        group = self.reserve_group(name, created_by=user.name, checked=True)
        if self.durable:
            self.uncommitted.append((user, group))
        else:
            self.group_committed(group, user)

    # join <group>
    def handle_join(self, user: User, args: tuple[str, ...]) -> None:
        group = self.find_group(args[0])
        if group.key in user.groups:
            raise ProtocolError(P.already_member(group.name))
        if self.outbox is not None and not group.members:
            # The first member here: the reply waits until this node hears the
            # group's channel, so nothing sent after it is missed (see backplane).
            self.join_group(user, group)
            self.queries.append(("join", user, group, None))
            return
        self.reply(user, P.joined(group.name))
        self.join_group(user, group)

    # leave <group>
    def handle_leave(self, user: User, args: tuple[str, ...]) -> None:
        group = self.member_group(user, args[0])
        self.reply(user, P.left(group.name))
        self.leave_group(user, group)

    # groups
    def handle_groups(self, user: User, args: tuple[str, ...]) -> None:
        self._need_cluster()
        self.send_line(user, self.groups_line())

    def groups_line(self) -> bytes:
        """The encoded `groups: ...` reply, built once per change of the set of groups
        (every change goes through `add_group`, `group_committed` or `remove_group`)."""
        line = self._groups_line
        if line is None:
            line = self._groups_line = P.encode(
                P.listing("groups", [g.name for g in self.groups.values()]))
        return line

    # users
    def handle_users(self, user: User, args: tuple[str, ...]) -> None:
        self._need_cluster()
        names = [u.name for u in self.users.values()]
        names.extend(u.name for u in self.remote_users.values())
        self.reply(user, P.listing("users", names))

    # public <group> <message>
    def handle_public(self, user: User, args: tuple[str, ...]) -> None:
        group = self.member_group(user, args[0])
        text = args[1]
        if P.has_control(text):
            raise ProtocolError(P.CONTROL_CHARS)
        data = P.encode(P.public_prefix(group.name, user.name) + text)
        stats = self.stats
        stats.messages_public += 1
        stats.deliveries_public += self.fanout(group, data, user)
        outbox = self.outbox
        if outbox is not None:
            outbox.append(new_public((group, data, user.name, text)))
        if self.history_size:
            ring = group.history
            if len(ring) == self.history_size:  # the ring drops its oldest at the append
                oldest = ring[0]
                self.history_bytes -= _sizeof(oldest[2]) + len(oldest[1]) + ENTRY_OVERHEAD
                group.skip += 1  # its record in history_order goes stale
                self.history_stale += 1
                if self.history_stale > self._compact_at:
                    self._compact_order()
            sender = user.name
            ring.append((self.clock(), sender, text))
            group.seq += 1
            self.history_order.append(group)
            self.history_bytes += _sizeof(text) + len(sender) + ENTRY_OVERHEAD
            journal = self.journal
            if journal is not None:
                if not group.unsaved:
                    journal.append(group)
                group.unsaved += 1
            if self.history_bytes > self.history_budget:
                self.trim_history()

    # private <user> <message>
    def handle_private(self, user: User, args: tuple[str, ...]) -> None:
        key = P.name_key(P.normalize(args[0]))
        target = self.users.get(key)
        if target is None:
            remote = self.remote_users.get(key)
            if remote is None:
                raise ProtocolError(P.no_such_user(args[0]))
            if P.has_control(args[1]):
                raise ProtocolError(P.CONTROL_CHARS)
            self._need_cluster()
            outbox = self.outbox
            assert outbox is not None  # remote users exist in cluster mode only
            outbox.append(E.Private(remote, P.encode(P.private_prefix(user.name) + args[1])))
            self.stats.messages_private += 1  # the deliveries count on the receiving node
            return
        if P.has_control(args[1]):
            raise ProtocolError(P.CONTROL_CHARS)
        self.send_line(target, P.encode(P.private_prefix(user.name) + args[1]))
        self.stats.messages_private += 1
        self.stats.deliveries_private += 1

    # exit
    def handle_exit(self, user: User, args: tuple[str, ...]) -> bool:
        self.reply(user, P.BYE)
        return True

    # history <group> [count]
    def handle_history(self, user: User, args: tuple[str, ...]) -> None:
        if not self.history_size:
            raise ProtocolError(P.HISTORY_DISABLED)
        group = self.member_group(user, args[0])
        count = P.parse_count(args[1] if len(args) > 1 else None)
        if self.outbox is not None:  # the cluster's history is in Redis: read it there
            self._need_cluster()
            self.queries.append(("history", user, group, count))
            return
        ring = group.history
        older = min(count, self.history_size, group.seq) - len(ring)
        if older > 0 and self.durable:
            # Memory no longer holds all of them: the writer reads the `older`
            # entries before the ring's oldest from the store, and answers with
            # them and this snapshot of the ring (what was sent before this command).
            self.queries.append(("stored", user, group, (group.seq - len(ring), older, list(ring))))
            return
        entries = list(ring)[-count:]
        for at, sender, text in entries:
            self.reply(user, P.history_line(group.name, at, sender, text))
        self.reply(user, P.end_of_history(group.name))

    # help
    def handle_help(self, user: User, args: tuple[str, ...]) -> None:
        self.reply(user, P.HELP)

    # ping
    def handle_ping(self, user: User, args: tuple[str, ...]) -> None:
        self.reply(user, P.PONG)

    def _need_cluster(self) -> None:
        if self.unavailable:
            raise ProtocolError(P.CLUSTER_UNAVAILABLE)

    # ------------------------------------------------------------ other nodes
    # Cluster mode: the backplane applies what other nodes published. Their users
    # are mirrored (`remote_users`, `Group.remote`) so `users`, `private` and the
    # notice limit are decided here without asking Redis; their public messages
    # go through the same queues as local ones.

    def remote_login(self, node: str, name: str, since: float, peer: str = "") -> None:
        key = P.name_key(name)
        if key in self.users:
            return  # ours (a stale event of a name this node now holds)
        user = self.remote_users.get(key)
        if user is None or user.node != node:
            if user is not None:
                self._forget_remote(user)
            self.remote_users[key] = RemoteUser(name, node, since, peer)

    def remote_logout(self, key: str, node: str) -> None:
        user = self.remote_users.get(key)
        if user is not None and user.node == node:
            self._forget_remote(user)

    def forget_remote(self, key: str) -> None:
        """Drop a mirrored user silently (Redis says the name is this node's now)."""
        user = self.remote_users.get(key)
        if user is not None:
            self._forget_remote(user)

    def _forget_remote(self, user: RemoteUser, notify: bool = False) -> None:
        for gkey in list(user.groups):
            self.remote_leave(user.key, gkey, user.node, notify)
        del self.remote_users[user.key]

    def remote_join(self, key: str, gkey: str, node: str, notify: bool = True) -> None:
        user = self.remote_users.get(key)
        group = self.groups.get(gkey)
        if user is None or user.node != node or group is None or key in group.remote:
            return
        group.remote[key] = user.name
        user.groups.add(gkey)
        if notify and group.members:
            self.remote_notice(group, P.joined_notice(user.name, group.name))

    def remote_leave(self, key: str, gkey: str, node: str, notify: bool = True) -> None:
        user = self.remote_users.get(key)
        group = self.groups.get(gkey)
        if user is None or user.node != node or group is None or key not in group.remote:
            return
        if notify and group.members:
            self.remote_notice(group, P.left_notice(user.name, group.name))
        del group.remote[key]
        user.groups.discard(gkey)

    def remote_notice(self, group: Group, line: str) -> None:
        """A notice about another node's user, to the local members who were already
        in the group in Redis's order (their own join came back before this event)."""
        if self.notice_limit and group.size() > self.notice_limit:
            return
        if not self.unconfirmed:
            self.stats.notices += self.fanout(group, P.encode(line), None)
            return
        data, gkey, n = P.encode(line), group.key, 0
        for member in group.members.values():
            if (member.key, gkey) not in self.unconfirmed:
                self.send_line(member, data)
                n += 1
        self.stats.notices += n

    def join_confirmed(self, key: str, gkey: str) -> None:
        """This node's own join event came back from Redis."""
        self.unconfirmed.discard((key, gkey))

    def remote_public(self, gkey: str, data: bytes, count: int = 1) -> None:
        """`count` public lines of another node, to every local member of the group."""
        group = self.groups.get(gkey)
        if group is not None and group.members:
            self.stats.deliveries_public += self.fanout(group, data, None) * count

    def remote_private(self, key: str, data: bytes) -> bool:
        user = self.users.get(key)
        if user is None:
            return False
        self.send_line(user, data)
        self.stats.deliveries_private += 1
        return True

    def remote_group(self, name: str, created_by: str, created_at: float) -> None:
        if P.name_key(name) not in self.groups:
            self.add_group(name, created_by).created_at = created_at

    def remote_group_deleted(self, gkey: str) -> None:
        """Another node's administrator deleted a group: as `remove_group` here."""
        group = self.groups.get(gkey)
        if group is not None:
            self.remove_group(group)

    def node_gone(self, node: str) -> list[str]:
        """A node died (or left): its users leave their groups, with notices here."""
        gone = [u for u in self.remote_users.values() if u.node == node]
        for user in gone:
            self._forget_remote(user, notify=True)
        return [u.name for u in gone]

    def node_state(self, node: str, users: list[tuple[str, float, str, list[str]]]) -> None:
        """Replace, silently, what this node knows of `node`'s users and memberships."""
        for user in [u for u in self.remote_users.values() if u.node == node]:
            self._forget_remote(user)
        for name, since, peer, gkeys in users:
            self.remote_login(node, name, since, peer)
            for gkey in gkeys:
                self.remote_join(P.name_key(name), gkey, node, notify=False)

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


HANDLERS: dict[str, Handler] = {word: getattr(Hub, f"handle_{word}") for word in P.SPECS}

"""What waits for the store (or Redis) before its reply: the durable-create
bookkeeping and the reads answered outside the core.

With a durable store a new group exists, and its creator hears
`ok: created group`, only once the store has it:

1. `create` checks the name (`check`) and `reserve`s it: the group is in
   `reserved` (not visible: `groups` does not list it, `join` cannot find it)
   and in `uncommitted`, with its creator;
2. right after the command the session takes what it left (`take`) and the
   store writer commits the groups on its thread, then reports each outcome as
   a typed result (`Committed`, `StorageFailed`, `Unavailable`, `Taken`);
   `settled` turns it into the group's fate and the creator's reply
   (`committed` or `not_committed`);
3. a command of another session that names a reserved group (a second `create`,
   a `join`) raises `GroupPending` in the handler; the hub parks it in
   `blocked`, and the writer `retry`s it once that commit is decided, so nobody
   hears "already exists" about a group that `join` cannot find yet.

Without a durable store (`Hub.durable` false) `create` commits at once.

The same session-side wait carries the replies that need a read first
(`queries`): `history` beyond what memory holds (`StoredQuery`, read by the
writer thread), and in a cluster `history` (`HistoryQuery`, read from Redis)
and a first local `join` (`JoinQuery`, answered once this node follows the
group's channel). The writer reports `HistoryRead` and `Followed`; `settled`
formats the replies (the writer formats none).

`put_back` undoes an administrator's delete the store failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from . import protocol as P
from .errors import GroupExists, GroupPending, ProtocolError, TooManyGroups
from .model import Entry, Group, User

if TYPE_CHECKING:
    from .hub import Hub


# ------------------------------------------------------------ what waits


@dataclass(frozen=True, slots=True)
class StoredQuery:
    """`history` beyond memory: the `count` entries numbered before `before` are
    in the store; `kept` is the ring as it was when the command ran."""

    user: User
    group: Group
    before: int
    count: int
    kept: list[Entry]


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Cluster mode: `history` reads the group's last `count` messages in Redis."""

    user: User
    group: Group
    count: int


@dataclass(frozen=True, slots=True)
class JoinQuery:
    """Cluster mode: the first local member's `ok: joined group` waits until this
    node follows the group's channel."""

    user: User
    group: Group


Query = StoredQuery | HistoryQuery | JoinQuery

Create = tuple[User | None, Group]
"""A reserved group and its creator (None: an administrator)."""

Blocked = tuple[User, Group, str]
"""A command line that named `Group` while it awaited its commit."""


class Pending(NamedTuple):
    """What the last command left for the store writer (see `Commits.take`)."""

    created: list[Create]
    blocked: list[Blocked]
    queries: list[Query]


# ------------------------------------------------------------ what the writer reports


@dataclass(frozen=True, slots=True)
class Committed:
    """The store has the group."""

    group: Group
    creator: User | None


@dataclass(frozen=True, slots=True)
class StorageFailed:
    """The store failed (or did not answer in time): nothing was created."""

    group: Group
    creator: User | None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Cluster mode: Redis could not be reached."""

    group: Group
    creator: User | None


@dataclass(frozen=True, slots=True)
class Taken:
    """Cluster mode: another node created a group of that name first (its record)."""

    group: Group
    creator: User | None
    name: str
    created_by: str
    created_at: float


@dataclass(frozen=True, slots=True)
class HistoryRead:
    """The entries a `history` answers with, oldest first; None: Redis could not
    be read (the client hears `error: cluster unavailable`)."""

    user: User
    group: Group
    entries: list[Entry] | None


@dataclass(frozen=True, slots=True)
class Followed:
    """Cluster mode: this node follows the group now (the answer to a `JoinQuery`)."""

    user: User
    group: Group


Result = Committed | StorageFailed | Unavailable | Taken | HistoryRead | Followed


class Commits:
    """The groups reserved and awaiting their commit, the commands blocked on them
    and the reads awaiting an answer; one per hub (`Hub.commits`)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.reserved: dict[str, Group] = {}  # created, awaiting commit, not visible yet
        self.uncommitted: list[Create] = []
        self.blocked: list[Blocked] = []
        self.queries: list[Query] = []

    # ------------------------------------------------------------ creating

    def check(self, name: str) -> str:
        """The NFC name of a group that may be created now; raises ProtocolError with
        the `create` errors of PROTOCOL.md in its order: invalid name, exists (or
        GroupPending: decided once that commit is), too many groups."""
        hub = self.hub
        name = P.normalize(name)
        problem = P.name_problem(name)
        if problem is not None:
            raise ProtocolError(P.invalid_group_name(problem))
        key = P.name_key(name)
        existing = hub.groups.get(key)
        if existing is not None:
            raise GroupExists(P.group_exists(existing.name))
        if key in self.reserved:
            raise GroupPending(self.reserved[key])
        if len(hub.groups) + len(self.reserved) >= hub.max_groups:
            raise TooManyGroups(P.too_many_groups(hub.max_groups))
        return name

    def reserve(self, name: str, created_by: str, checked: bool = False) -> Group:
        """Hold a new group's name until the store commits the group; raises the
        errors of `check` unless the caller just ran it (`checked`)."""
        if not checked:
            name = self.check(name)
        hub = self.hub
        group = Group(name, created_by, hub.clock(), hub.history_size)
        self.reserved[group.key] = group
        return group

    def committed(self, group: Group, creator: User | None) -> None:
        """The store has `group`: it exists from now on, and its creator hears so."""
        hub = self.hub
        del self.reserved[group.key]
        hub.groups[group.key] = group
        hub.groups_changed()
        if creator is not None and hub.users.get(creator.key) is creator:
            hub.reply(creator, P.created(group.name))

    def not_committed(self, group: Group, creator: User | None,
                      line: str | None = None) -> None:
        """The store failed (or, in a cluster, another node has the name): the name
        is free again here, the creator is told (`line`, or the storage error) and
        gets its `--create-rate` token back: only groups created count."""
        hub = self.hub
        del self.reserved[group.key]
        if creator is not None and creator.addr is not None and hub.create_rate is not None:
            hub.create_rate.refund(creator.addr)
        if creator is not None and hub.users.get(creator.key) is creator:
            hub.reply(creator, line or P.storage_failed(group.name))

    def put_back(self, group: Group) -> None:
        """Deleting `group` failed in the store: it exists again (without the members
        it lost), as the store still has it."""
        hub = self.hub
        if group.key not in hub.groups:
            hub.groups[group.key] = group
            hub.groups_changed()

    # ------------------------------------------------------------ the writer's side

    def take(self) -> Pending:
        """The creates, blocked commands and reads the last command left; forgets them.

        Taken synchronously, right after the command that made them, so each
        session settles its own and its replies keep their order."""
        pending = Pending(self.uncommitted, self.blocked, self.queries)
        self.uncommitted, self.blocked, self.queries = [], [], []
        return pending

    def retry(self, user: User, line: str) -> None:
        """Run again a blocked command once its group's commit is decided (it may
        block again, on a newer reservation), if its user is still logged in."""
        hub = self.hub
        if hub.users.get(user.key) is user:
            hub.handle(user, line)

    def settled(self, result: Result) -> None:
        """What the store (or Redis) answered, as the group's fate and the replies."""
        hub = self.hub
        if isinstance(result, Committed):
            self.committed(result.group, result.creator)
        elif isinstance(result, StorageFailed):
            self.not_committed(result.group, result.creator)
        elif isinstance(result, Unavailable):
            self.not_committed(result.group, result.creator, P.CLUSTER_UNAVAILABLE)
        elif isinstance(result, Taken):
            hub.mirror.group(result.name, result.created_by, result.created_at)
            self.not_committed(result.group, result.creator, P.group_exists(result.name))
        elif hub.users.get(result.user.key) is result.user:
            name = result.group.name
            if isinstance(result, Followed):
                hub.reply(result.user, P.joined(name))
            elif result.entries is None:
                hub.reply(result.user, P.CLUSTER_UNAVAILABLE)
            else:
                for at, sender, text in result.entries:
                    hub.reply(result.user, P.history_line(name, at, sender, text))
                hub.reply(result.user, P.end_of_history(name))

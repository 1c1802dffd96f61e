"""The chat's objects, defined once: `User`, `RemoteUser`, `Group`, history
`Entry` (and what one costs, `entry_size`), and `Conn`, what the layers outside
the transport may use of a user's connection.

Plain slotted classes, no behaviour beyond their own fields: the hub
(`hub.py`) decides membership and fan-out, `commits.py` the groups awaiting
the store, `mirror.py` the users of other nodes.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from operator import attrgetter
from typing import Protocol

from . import protocol as P
from .audit import ADMIN_ACCOUNT
from .names import skeleton


class Conn(Protocol):
    """What the layers outside the transport use of a user's connection (the
    transport's Session): the per-turn flush writes to it, the backplane reads its
    peer address. None for users without one (tests, internal users)."""

    peer: str
    # WebSocket sessions: frames a queue (one cached frame per delivery); None for TCP.
    framer: Callable[[list[bytes]], bytes] | None

    def write(self, data: bytes, framed: bool = False) -> None: ...


Push = Callable[[bytes], None]
"""A user's queue appender (`User.push`), what fan-out calls per receiver."""


class User:
    """A logged-in session as the hub sees it. `conn` belongs to the transport."""

    __slots__ = ("name", "key", "skel", "groups", "queue", "push", "conn", "since", "addr",
                 "account")

    def __init__(self, name: str, conn: Conn | None = None, since: float = 0.0,
                 addr: str | None = None, account: str | None = None,
                 skel: str | None = None) -> None:
        self.name = name
        self.key = P.name_key(name)
        # Look-alike names collide on this (names.py); computed once, here.
        self.skel = skeleton(name) if skel is None else skel
        self.groups: dict[str, Group] = {}
        self.queue: list[bytes] = []
        # One bound method for the user's life: groups cache it, and fan-out
        # skips the sender by identity.
        self.push: Push = self.queue.append
        self.conn: Conn | None = conn
        self.since = since
        # The client's address as `--create-rate` counts it (limits.address_key);
        # None (tests, internal users) is not rate-limited.
        self.addr = addr
        # The key of the account this session logged in to (or registered); None: a guest.
        self.account = account

    def __repr__(self) -> str:
        return f"User({self.name!r})"


class RemoteUser:
    """Cluster mode: a user logged in on another node, as this node's mirror knows it."""

    __slots__ = ("name", "key", "skel", "node", "since", "peer", "groups")

    def __init__(self, name: str, node: str, since: float, peer: str = "") -> None:
        self.name = name
        self.key = P.name_key(name)
        self.skel = skeleton(name)
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

sizeof = sys.getsizeof


def entry_size(entry: Entry) -> int:
    """What one history entry counts against `--history-memory`."""
    return sizeof(entry[2]) + len(entry[1]) + ENTRY_OVERHEAD


class Group:
    __slots__ = (
        "name", "key", "skel", "members", "created_by", "created_at", "history", "unsaved",
        "_pushes", "remote", "seq", "pending", "skip",
        "owner", "mods", "invited", "banned", "muted", "since", "rv",
        "invite_only", "mods_post", "joined_history", "private", "guarded",
    )

    def __init__(self, name: str, created_by: str, created_at: float, history: int) -> None:
        self.name = name
        self.key = P.name_key(name)
        self.skel = skeleton(name)
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
        self._pushes: list[Push] | None = None
        # Cluster mode: members on other nodes, key -> display name (see `RemoteUser`).
        self.remote: dict[str, str] = {}
        # Roles and moderation (PROTOCOL.md v2). Every check is a lookup in one of
        # these, keyed by name_key (an account's key is the same key): never a
        # walk over members.
        self.owner: str | None = None  # the creating account's key; None: no owner
        self.mods: dict[str, str] = {}  # key -> name as first written
        self.invited: dict[str, str] = {}
        self.banned: dict[str, str] = {}
        self.muted: dict[str, float] = {}  # key -> until (clock seconds; inf: until unmute)
        # Cluster mode: the version of the roles in Redis this node has applied
        # (backplane/keys.py ROLES); a change announced with a version not above
        # it is already here.
        self.rv = 0
        # `history joined`: member key -> `seq` at the member's current join.
        self.since: dict[str, int] = {}
        self.invite_only = False  # join invite
        self.mods_post = False  # post moderators
        self.joined_history = False  # history joined
        self.private = False  # visibility private
        # `public`'s one test: True when posting is restricted or someone is muted.
        self.guarded = False

    def add(self, user: User) -> None:
        self.members[user.key] = user
        # Appending keeps a crowd filling up O(N) overall; a rebuild per join was
        # O(N^2) (seen in the connect profile: 1,000 logins into General).
        if self._pushes is not None:
            self._pushes.append(user.push)

    def remove(self, user: User) -> None:
        del self.members[user.key]
        self.since.pop(user.key, None)
        self._pushes = None

    def clear(self) -> None:
        """No local member left (the group was deleted)."""
        self.members.clear()
        self.since.clear()
        self._pushes = None

    def size(self) -> int:
        """Members on every node (the local ones alone without a cluster)."""
        return len(self.members) + len(self.remote)

    def pushes(self) -> list[Push]:
        """Members' queue appenders, rebuilt only after a membership change."""
        if self._pushes is None:
            self._pushes = list(map(_PUSH, self.members.values()))
        return self._pushes

    def settings(self) -> list[str]:
        """The four settings' values, in PROTOCOL.md's order."""
        return [
            "invite" if self.invite_only else "open",
            "moderators" if self.mods_post else "all",
            "joined" if self.joined_history else "shared",
            "private" if self.private else "public",
        ]

    def reguard(self) -> None:
        self.guarded = self.mods_post or bool(self.muted)

    def rank(self, account: str | None) -> int:
        """2: the owner (or an administrator), 1: a moderator, 0: anyone else (guests
        included)."""
        if account is None:
            return 0
        if account == self.owner:
            return 2
        if account in self.mods:
            return 1
        return 2 if account == ADMIN_ACCOUNT else 0  # administrators: the owner's powers

    def sees(self, user: User) -> bool:
        """Whether `user` may know a private group exists."""
        if not self.private:
            return True
        key = user.key
        return (key in self.members or key in self.invited
                or self.rank(user.account) > 0)

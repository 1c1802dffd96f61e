"""What the hub (and the backplane's own callers) ask other nodes to hear: typed events.

In cluster mode `Hub.outbox` is a list of these, appended in the order things
happened and drained once per loop turn by the backplane's publisher, which
dispatches on the event's type (a table from class to method, not a chain of
string tests). One class per kind, all immutable:

- from the hub: `Join`, `Leave`, `Logout`, `Public`, `Private`, `Unfollow`,
  `Removed`;
- from the backplane's callers (logins, `history`, group deletion, admin API)
  and its listener/heartbeat: `Claim`, `History`, `Delete`, `Follow`,
  `Release`, `Raw`, `Roles`, `Sync`, `State`. These carry a waiter the publisher
  settles once Redis answered; the waiter itself is mutable, the event not.

`Public` is a `typing.NamedTuple`, the others frozen slots dataclasses: a
`public` appends one event per message on the hot path, and a frozen
dataclass's `__init__` (one `object.__setattr__` per field) costs 0.79 µs where
the plain tuple it replaces cost 0.05 µs, about 5% of `Hub.handle` for a
`public` to 100 members (~12 µs). The NamedTuple built through `new_public`
costs 0.22 µs (its generated `__new__` 0.32 µs): `Hub.handle` measured the
same as with the tuple, within the noise (CPython 3.11, this 2-core machine).

Pure data: this module imports nothing but typing and dataclasses, and names
the hub's objects through the small Protocols below (what the backplane reads
of them), so it holds whatever the model module will call them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, Protocol


class UserRef(Protocol):
    """A local user as events carry it: the backplane reads its key and name."""

    name: str
    key: str


class GroupRef(Protocol):
    """A group as events carry it (the publisher also checks its local `members`)."""

    name: str
    key: str
    members: dict[str, Any]


class RemoteRef(Protocol):
    """Another node's user, as this node's mirror knows it."""

    key: str
    node: str


class Signal(Protocol):
    """Set once the publisher is done with an event (a gevent `Event`)."""

    def set(self) -> None: ...


class Result(Protocol):
    """The answer to an event that waits for Redis (a gevent `AsyncResult`)."""

    def set(self, value: Any = None) -> None: ...

    def set_exception(self, exception: BaseException) -> None: ...


# ------------------------------------------------------------ from the hub


class Public(NamedTuple):
    """A public message: `data` is the encoded delivery line, `sender` and `text`
    its history entry (see the module docstring for why a NamedTuple)."""

    group: GroupRef
    data: bytes
    sender: str
    text: str


new_public = partial(tuple.__new__, Public)
"""`new_public((group, data, sender, text))`: a `Public` without the Python frame of
NamedTuple's generated `__new__` (the hot path's constructor; takes one tuple)."""


@dataclass(frozen=True, slots=True)
class Join:
    user: UserRef
    group: GroupRef


@dataclass(frozen=True, slots=True)
class Leave:
    user: UserRef
    group: GroupRef


@dataclass(frozen=True, slots=True)
class Logout:
    """The user is gone: free the name cluster-wide and tell every node."""

    user: UserRef


@dataclass(frozen=True, slots=True)
class Private:
    """A private message to another node's user; `data` is the encoded line."""

    remote: RemoteRef
    data: bytes


@dataclass(frozen=True, slots=True)
class Unfollow:
    """The group lost local members (or was deleted): leave its channel if none are left."""

    group: GroupRef


@dataclass(frozen=True, slots=True)
class Removed:
    """The user of key `key` (shown as `name`) is out of the group of key `gkey`,
    removed here by `actor` (kick or ban): other nodes drop it from their mirror
    and tell their members. `was` False: it was no member here any more (the
    answer to another node's removal request). `group`: the local group, whose
    channel this node leaves if it has no local member left (None: unknown)."""

    key: str
    name: str
    gkey: str
    actor: str
    was: bool
    group: GroupRef | None


# ------------------------------------------------------------ from the backplane's callers


@dataclass(frozen=True, slots=True)
class Claim:
    """Hold a name for a login; `claim` is the backplane's pending claim (its waiter)."""

    claim: Any


@dataclass(frozen=True, slots=True)
class Release:
    """Free a name this node claimed but did not use (`key`: the name key)."""

    key: str


@dataclass(frozen=True, slots=True)
class History:
    """Read the group's last `count` messages, in order after what was queued before."""

    group: GroupRef
    count: int
    result: Result


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete a group and its history everywhere, after what was queued before."""

    group: GroupRef
    result: Result


@dataclass(frozen=True, slots=True)
class Follow:
    """Subscribe to the group's channel; `done` is set once Redis confirmed (or failed)."""

    group: GroupRef
    done: Signal


@dataclass(frozen=True, slots=True)
class Raw:
    """A prepared control message (`message`, JSON) for `channel`: kicks, announcements."""

    channel: str
    message: str


@dataclass(frozen=True, slots=True)
class Roles:
    """A change of a group's roles (a `moderation.Change`): written to Redis and
    announced to every node in one atomic step; `result` hears 0 if the group is
    gone, an exception if Redis failed (the echo settles it otherwise)."""

    change: Any
    token: str
    result: Result


@dataclass(frozen=True, slots=True)
class Sync:
    """Register this node and its users again, where it stands in the sequence;
    `done` (None: nobody waits) is settled once it is done."""

    done: Result | None


@dataclass(frozen=True, slots=True)
class State:
    """Publish this node's users and memberships (a new node said hello)."""


Event = Public | Join | Leave | Logout | Private | Unfollow | Removed | Claim | Release | History \
    | Delete | Follow | Raw | Roles | Sync | State
"""Anything `Hub.outbox` holds."""

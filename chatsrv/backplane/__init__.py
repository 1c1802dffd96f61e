"""The backplane: how one chatsrv process shares its chat with others.

The hub never talks to it directly. In cluster mode the hub records what the
other nodes must hear in `Hub.outbox` (a list of typed events from
chatsrv/core/events.py, like `Hub.dirty`), and the backplane drains it once
per loop turn; what other nodes publish comes back
through the hub's `remote_*` methods, into the same per-user queues as local
lines. Without `--redis` the outbox is None and the backplane is `Local`,
which does nothing: the single-node hot path pays one `is not None` test.

- `Local` (default): one process is the whole server.
- `RedisBackplane` (`node.py`, `--redis`): a node of a cluster on Redis pub/sub,
  its jobs in `publisher.py`, `listener.py` and `heartbeat.py`, with groups and
  history in Redis (`store.py`) and `--workers` (`workers.py`).

docs/scaling.md describes the design, its guarantees and what an outage loses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..config import Config
    from ..core import events as E
    from ..core.accounts import Account
    from ..core.model import Group, RemoteUser, User


class ClusterHub(Protocol):
    """What a node uses of the hub (`hub.Hub` implements it), named once: the
    outbox it drains, the state it publishes when it registers, and the mirror
    methods that apply what the other nodes published."""

    outbox: list[E.Event] | None  # the publisher takes it whole, once per loop turn
    unavailable: bool  # set while Redis is unreachable; commands needing it refuse
    unconfirmed: set[tuple[str, str]]  # cleared once this node's state is published
    # Set while the public messages held through an outage are at their limit
    # (publisher.HOLD_MAX): `public` answers an error instead of a silent drop.
    held_full: bool

    @property
    def history_size(self) -> int: ...
    @property
    def users(self) -> Mapping[str, User]: ...
    @property
    def groups(self) -> Mapping[str, Group]: ...
    @property
    def remote_users(self) -> Mapping[str, RemoteUser]: ...

    def join_cluster(self, node: str) -> None: ...
    def forget_remote(self, key: str) -> None: ...
    def remote_login(self, node: str, name: str, since: float, peer: str = "") -> None: ...
    def remote_logout(self, key: str, node: str) -> None: ...
    def remote_join(self, key: str, gkey: str, node: str, notify: bool = True) -> None: ...
    def remote_leave(self, key: str, gkey: str, node: str, notify: bool = True) -> None: ...
    def join_confirmed(self, key: str, gkey: str) -> None: ...
    def remote_public(self, gkey: str, data: bytes, count: int = 1) -> None: ...
    def remote_private(self, key: str, data: bytes) -> bool: ...
    def remote_group(self, name: str, created_by: str, created_at: float,
                     owner: str | None = None) -> None: ...
    def remote_roles(self, gkey: str, version: int, field: str | None, value: str | None,
                     actor: str, target: str | None, notice: str | None,
                     reason: str | None) -> None: ...
    def reload_roles(self, gkey: str, fields: dict[str, str]) -> None: ...
    def remote_removed(self, key: str, gkey: str, node: str, actor: str) -> None: ...
    def remove_request(self, gkey: str, key: str, actor: str, reason: str | None) -> None: ...
    def remote_group_deleted(self, gkey: str) -> None: ...
    def node_gone(self, node: str) -> list[str]: ...
    def node_state(self, node: str, users: list[tuple[str, float, str, list[str]]]) -> None: ...
    def reply(self, user: User, line: str) -> None: ...
    def announce(self, text: str, group_name: str | None = None) -> int: ...


class Local:
    """The single-process backplane: nothing to share, nothing to wait for."""

    cluster = False
    node = ""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def wake(self) -> None:
        pass

    def claim(self, name: str, peer: str) -> None:
        """Hold `name` cluster-wide for a login from `peer`; raises LoginRefused."""

    def kick(self, name: str) -> tuple[str, str] | None:
        """Kick a user of another node: (display name, node), or None if unknown."""
        return None

    def announce(self, text: str, group: Group | None) -> int:
        """Tell the other nodes; returns how many of their users it reaches."""
        return 0

    def replace(self, name: str) -> bool:
        """End another node's session of `name` for a login to its account here
        (`* disconnected: logged in from another connection`); False if none."""
        return False

    def account_changed(self, key: str) -> None:
        """An account was created, changed or deleted here: the other nodes reload it."""

    def login_failed(self, key: str, at: float) -> None:
        """A failed login to an existing account here: every node counts it."""

    def status(self) -> dict:
        return {"mode": "single"}


class AccountEvents(Protocol):
    """What a node tells the server about accounts other nodes changed."""

    def account_updated(self, key: str, account: Account | None) -> None:
        """The account as Redis has it now (None: deleted)."""

    def login_failed_elsewhere(self, key: str, at: float) -> None:
        """Another node counted a failed login to this account."""


def open_backplane(config: Config, hub: ClusterHub, *, kick_local: Callable[[str, str], object],
                   schedule_flush: Callable[[], None], accounts: AccountEvents | None = None):
    """`Local`, or a Redis node when `--redis` is set.

    A node gets the hub as a `ClusterHub` (it drains its outbox and mirrors the
    other nodes into it) and two callbacks of the server it runs in, never the
    server itself: `kick_local(name, reason)` ends a user's session on this node
    (another node asked: `kicked`, or `replaced` by a login to its account there),
    `schedule_flush()` has the lines it queued sent at the end of this loop turn;
    `accounts` hears of accounts the other nodes changed."""
    if not config.redis:
        return Local()
    from .node import RedisBackplane

    return RedisBackplane(hub, config.redis, config.node_id, config.node_ttl,
                          kick_local=kick_local, schedule_flush=schedule_flush,
                          accounts=accounts)

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

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..core.model import Group
    from ..net.session import Session
    from ..server import ChatServer


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

    def claim(self, name: str, session: Session) -> None:
        """Hold `name` cluster-wide before the login; raises LoginRefused."""

    def kick(self, name: str) -> tuple[str, str] | None:
        """Kick a user of another node: (display name, node), or None if unknown."""
        return None

    def announce(self, text: str, group: Group | None) -> int:
        """Tell the other nodes; returns how many of their users it reaches."""
        return 0

    def status(self) -> dict:
        return {"mode": "single"}


def open_backplane(server: ChatServer):
    """`Local`, or a Redis node when `--redis` is set."""
    config = server.config
    if not config.redis:
        return Local()
    from .node import RedisBackplane

    return RedisBackplane(server, config.redis, config.node_id, config.node_ttl)

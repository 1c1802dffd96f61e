"""A node of a chatsrv cluster on Redis: the state its three jobs share, and its requests.

Three greenlets, each in its own module and on its own Redis connection (gevent
sockets, see conn.py):

- `publisher.py`: once per loop turn drains the hub's `outbox` (typed events,
  chatsrv/core/events.py) into one ordered pipeline;
- `listener.py`: applies what other nodes publish, reconnects after an outage
  and has the publisher re-register this node;
- `heartbeat.py`: keeps this node alive in Redis and reaps dead nodes.

`RedisBackplane` is what the server sees (`open_backplane`): start/stop, the
requests of sessions and the admin API (claim a name, read history, delete a
group, follow a group's channel, kick, announce), all of which go through the
outbox so they stay in order with everything this node published before. It
also holds the small state the jobs share (the pub/sub connection and its
subscriptions, pending claims, counters, availability).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
from gevent.event import AsyncResult, Event

from ..core import events as E
from ..core import protocol as P
from ..core.errors import ClusterUnavailable, LoginRefused
from . import conn, keys
from .heartbeat import Heartbeat
from .listener import SYNC_TIMEOUT_S, Listener
from .publisher import SUBSCRIBE_WAIT_S, Publisher
from .store import account_from_json, decoded

if TYPE_CHECKING:
    from redis.client import PubSub

    from ..core.model import Group
    from ..core.moderation import Change
    from . import AccountEvents, ClusterHub

log = logging.getLogger("chatsrv.backplane")

KICK_WAIT_S = 5.0


class NameClaim:
    """A name claim: won once Redis said so *and* its login event came back to this
    node, so every event Redis ordered before this login has been applied here
    before the user is welcomed (the notices a user gets follow Redis's order)."""

    __slots__ = ("name", "key", "peer", "since", "result", "abandoned", "token", "won",
                 "echoed")

    def __init__(self, name: str, peer: str, since: float, token: str) -> None:
        self.name = name
        self.key = P.name_key(name)
        self.peer = peer
        self.since = since
        self.token = token
        self.result = AsyncResult()
        self.abandoned = False
        self.won = False
        self.echoed = False

    def settle(self) -> None:
        if self.won and self.echoed and not self.result.ready():
            self.result.set(True)


class Stats:
    __slots__ = ("published", "received", "dropped", "outages", "reaped", "batches")

    def __init__(self) -> None:
        self.published = self.received = self.dropped = 0
        self.outages = self.reaped = self.batches = 0


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class RedisBackplane:
    cluster = True

    def __init__(self, hub: ClusterHub, url: str, node: str | None, ttl: float, *,
                 kick_local: Callable[[str, str], object],
                 schedule_flush: Callable[[], None],
                 accounts: AccountEvents | None = None) -> None:
        self.hub = hub
        self.accounts = accounts
        # The server's, for the jobs: end a session of this node (a kick from another
        # node, a name lost to an older claim); send what was queued, this loop turn.
        self.kick_local = kick_local
        self.schedule_flush = schedule_flush
        self.url = url
        self.node = node or default_node_id()
        self.node_b = self.node.encode()
        self.ttl = ttl
        self.redis = conn.loop_client(url)
        # Shared by the jobs: the listener's pub/sub connection (None while down) and
        # the group channels it follows; the publisher subscribes a group's first
        # local member's channel on it and waits for `sub_waiters`.
        self.pubsub: PubSub | None = None
        self.subscribed: set[str] = set()  # group keys
        self.sub_waiters: dict[bytes, Event] = {}  # channel -> set when subscribed
        self.stats = Stats()
        self.down_since: float | None = None
        self.stopping = False
        self.started_at = time.time()
        self.woken = Event()  # the publisher's: the outbox has something
        self.reconnect = False  # the listener's: reconnect (set by `failed`)
        self.first_sync = True
        self.own_gone = 0  # "gone" messages about this node that this node published
        self.claims: dict[str, NameClaim] = {}  # by token, until their login event is back
        # Role changes of this node, by token, set when their announcement is back.
        self.roles_echoes: dict[str, Event] = {}
        self._tokens = itertools.count(1)
        self._greenlets: list[gevent.Greenlet] = []
        self.publisher = Publisher(self)
        self.listener = Listener(self)
        self.heartbeat = Heartbeat(self)
        self.hub.join_cluster(self.node)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Join the cluster; returns once registered (or, if Redis is away, at once
        with the hub marked unavailable: the listener keeps trying)."""
        self.hub.unavailable = True  # until the first sync
        self.down_since = time.monotonic()
        ready = Event()
        self._greenlets = [
            gevent.spawn(self.publisher.run),
            gevent.spawn(self.listener.run, ready),
            gevent.spawn(self.heartbeat.run),
        ]
        ready.wait(SYNC_TIMEOUT_S)
        log.info("cluster node %s on %s (node TTL %g s)%s", self.node, conn.describe(self.url),
                 self.ttl, "" if not self.hub.unavailable else ": Redis not reachable yet")

    def stop(self) -> None:
        """Publish what is left (the sessions' logouts), then leave the cluster cleanly."""
        if self.stopping or not self._greenlets:
            return
        self.stopping = True
        deadline = time.monotonic() + 3.0
        while (self.hub.outbox or self.woken.is_set()) and time.monotonic() < deadline:
            self.woken.set()
            gevent.sleep(0.02)
        gevent.sleep(0)  # let an in-flight pipeline finish
        if not self.hub.unavailable:
            try:
                self.redis.delete(keys.heartbeat(self.node))
                self.heartbeat.reap(self.node)
            except conn.ERRORS as err:
                log.warning("leaving the cluster: %s", err)
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        self.redis.close()
        log.info("left the cluster")

    def wake(self) -> None:
        self.woken.set()

    def post(self, event: E.Event) -> None:
        """Queue an event for the publisher, in order with the hub's own."""
        outbox = self.hub.outbox
        assert outbox is not None  # the hub joined the cluster before the backplane started
        outbox.append(event)

    def status(self) -> dict:
        stats = self.stats
        nodes = sorted({u.node for u in self.hub.remote_users.values()} | {self.node})
        return {
            "mode": "cluster", "node": self.node, "redis": conn.describe(self.url),
            "available": not self.hub.unavailable, "nodes_seen": nodes,
            "remote_users": len(self.hub.remote_users),
            "subscribed_groups": len(self.subscribed), "published": stats.published,
            "received": stats.received, "dropped": stats.dropped, "outages": stats.outages,
            "reaped_nodes": stats.reaped,
        }

    # ------------------------------------------------------------ requests from sessions/API

    def claim(self, name: str, peer: str) -> None:
        """Hold `name` in Redis for this node (in the publisher's order, after any
        logout already queued); the session's greenlet (logging in from `peer`) waits.
        Raises LoginRefused."""
        hub = self.hub
        if hub.unavailable:
            raise LoginRefused(P.CLUSTER_UNAVAILABLE)
        claim = NameClaim(name, peer, time.time(), str(next(self._tokens)))
        self.claims[claim.token] = claim
        self.post(E.Claim(claim))
        self.wake()
        try:
            won = claim.result.get(timeout=conn.COMMAND_TIMEOUT_S + 1)
        except (ClusterUnavailable, gevent.Timeout):
            self._abandon(claim)
            raise LoginRefused(P.CLUSTER_UNAVAILABLE) from None
        except BaseException:  # the session ended while waiting
            self._abandon(claim)
            raise
        finally:
            self.claims.pop(claim.token, None)
        if not won:
            raise LoginRefused(P.username_taken(name))
        hub.forget_remote(claim.key)  # a stale mirror entry: Redis says the name is ours

    def read_history(self, group: Group, count: int) -> list[tuple[float, str, str]]:
        """The group's last `count` messages from Redis, read after everything this
        node published before (same pipeline order). The caller's greenlet waits."""
        if self.hub.unavailable:
            raise ClusterUnavailable("cluster unavailable")
        result = AsyncResult()
        self.post(E.History(group, count, result))
        self.wake()
        raw = result.get(timeout=conn.COMMAND_TIMEOUT_S + 1)
        entries = []
        for item in raw:
            at, sender, text = json.loads(item)
            entries.append((float(at), sender, text))
        return entries

    def delete_group(self, group: Group) -> None:
        """Remove a group the hub just removed from Redis (its record and history) and
        tell every node, after everything this node queued before (a message still
        queued would otherwise put the history list back). The caller's greenlet
        waits; raises ClusterUnavailable."""
        if self.hub.unavailable:
            raise ClusterUnavailable("cluster unavailable")
        result = AsyncResult()
        self.post(E.Delete(group, result))
        self.wake()
        try:
            result.get(timeout=conn.COMMAND_TIMEOUT_S + 1)
        except gevent.Timeout:
            raise ClusterUnavailable("Redis did not answer") from None

    def change_roles(self, change: Change) -> bool:
        """Have Redis make a role change and announce it (after everything this node
        queued before); returns once this node applied it, False if the group no
        longer exists. The caller's greenlet waits; raises ClusterUnavailable
        (then this node changed nothing, and Redis did not either unless the
        failure came after its answer: the next (re)connection reloads)."""
        if self.hub.unavailable:
            raise ClusterUnavailable("cluster unavailable")
        token = str(next(self._tokens))
        echo = self.roles_echoes[token] = Event()
        result = AsyncResult()
        try:
            self.post(E.Roles(change, token, result))
            self.wake()
            version = result.get(timeout=conn.COMMAND_TIMEOUT_S + 1)
            if not version:
                return False
            echo.wait(conn.COMMAND_TIMEOUT_S)
            if not echo.is_set() and change.group.rv < version:
                raise ClusterUnavailable("the change was not announced back")
            return True
        except gevent.Timeout:
            raise ClusterUnavailable("Redis did not answer") from None
        finally:
            self.roles_echoes.pop(token, None)

    def remove_remote(self, change: Change) -> None:
        """A kick (or ban) of another node's member: a kick asks its node to remove
        it. Returns once this node heard it is out of the group (that node's
        `removed`, after every message it sent before, or it left), at most
        KICK_WAIT_S."""
        group, key = change.group, change.target
        if change.field is None:
            self._control(keys.node_channel(change.node or ""), {
                "type": "remove", "node": self.node, "group": group.key, "user": key,
                "actor": change.actor, "reason": change.reason})
        deadline = time.monotonic() + KICK_WAIT_S
        while key in group.remote and time.monotonic() < deadline:
            gevent.sleep(0.02)

    def reload_roles(self) -> None:
        """Every group's roles as Redis has them now (the listener, once subscribed)."""
        gkeys = list(self.hub.groups)
        pipe = self.redis.pipeline(transaction=False)
        for gkey in gkeys:
            pipe.hgetall(keys.roles(gkey))
        for gkey, fields in zip(gkeys, pipe.execute(), strict=True):
            self.hub.reload_roles(gkey, decoded(fields))
        self.schedule_flush()

    def _abandon(self, claim: NameClaim) -> None:
        claim.abandoned = True
        if claim.won:  # Redis gave us the name, but nobody will use it
            self.abandon(claim.name)

    def follow(self, group: Group) -> None:
        """Return once this node hears the group's channel (or Redis failed to say so):
        the publisher subscribes before it sends anything queued after a join."""
        done = Event()
        self.post(E.Follow(group, done))
        self.wake()
        done.wait(SUBSCRIBE_WAIT_S + 1)

    def abandon(self, name: str) -> None:
        """The name was claimed but the login did not happen: free it again."""
        self.post(E.Release(P.name_key(name)))
        self.wake()

    def kick(self, name: str, reason: str = "kicked") -> tuple[str, str] | None:
        user = self.hub.remote_users.get(P.name_key(P.normalize(name)))
        if user is None:
            return None
        self._control(keys.node_channel(user.node),
                      {"type": "kick", "name": user.name, "reason": reason})
        deadline = time.monotonic() + KICK_WAIT_S
        while self.hub.remote_users.get(user.key) is user and time.monotonic() < deadline:
            gevent.sleep(0.02)  # the name is free once its node's logout arrived
        return user.name, user.node

    def replace(self, name: str) -> bool:
        return self.kick(name, "replaced") is not None

    def account_changed(self, key: str) -> None:
        self._control(keys.CTL, {"type": "account", "node": self.node, "key": key})

    def login_failed(self, key: str, at: float) -> None:
        self._control(keys.CTL, {"type": "loginfail", "node": self.node, "key": key, "at": at})

    def fetch_account(self, key: str) -> None:
        """Another node changed an account: read it from Redis and tell the server
        (a greenlet of its own, so the listener never waits for it)."""
        if self.accounts is None:
            return
        try:
            raw = self.redis.hget(keys.ACCOUNTS, key)
            last = self.redis.hget(keys.ACCOUNT_LOGINS, key)
        except conn.ERRORS as err:
            log.warning("cluster: cannot read account %s from Redis: %s", key, err)
            return
        account = None if raw is None else account_from_json(
            raw, float(last) if last is not None else None)
        self.accounts.account_updated(key, account)
        self.schedule_flush()

    def announce(self, text: str, group: Group | None) -> int:
        self._control(keys.CTL, {"type": "announce", "node": self.node, "text": text,
                                 "group": group.name if group is not None else None})
        return len(group.remote) if group is not None else len(self.hub.remote_users)

    def _control(self, channel: str, message: dict) -> None:
        self.post(E.Raw(channel, keys.dumps(message)))
        self.wake()

    # ------------------------------------------------------------ shared by the jobs

    def failed(self, err: Exception) -> None:
        """Redis went away: say so once, mark the hub unavailable, let the listener retry."""
        self.reconnect = True
        if self.hub.unavailable:
            return
        self.hub.unavailable = True
        self.down_since = time.monotonic()
        self.stats.outages += 1
        log.error("cluster unavailable: Redis %s: %s; local clients stay connected, "
                  "reconnecting", conn.describe(self.url), err)

    def recovered(self) -> None:
        """Registered again (the publisher's `sync`): the hub is available."""
        if self.hub.unavailable:
            self.hub.unavailable = False
            spent = time.monotonic() - self.down_since if self.down_since else 0.0
            if self.stats.outages:
                log.warning("cluster available again after %.1f s; node %s registered again",
                            spent, self.node)
            self.down_since = None

    def heartbeat_ms(self) -> int:
        return max(int(self.ttl * 1000 * 2 / 3), 100)

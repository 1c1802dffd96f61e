"""A node of a chatsrv cluster on Redis: publisher, listener, heartbeat and reaper.

Three greenlets, each with its own Redis connection (gevent sockets, see conn.py):

- publisher: once per loop turn (woken by the server's flush) it takes the
  hub's `outbox` and sends all of it in one pipeline: public messages to the
  group's channel, private ones to the receiver's node channel, joins, leaves,
  logouts (which free the name) and name claims to the control channel/keys.
  One greenlet on one connection, in outbox order: that is what keeps every
  sender's order across nodes. Nothing on the event loop ever waits for it: a
  `public` reaches local members in the same turn and Redis gets it after.
- listener: one pub/sub connection for the control channel, this node's
  channel and the channels of groups that have local members. It applies what
  other nodes publish through the hub's `remote_*` methods. When Redis goes
  away it marks the hub unavailable, retries with backoff, subscribes again
  and has the publisher re-register this node (`sync`).
- heartbeat: refreshes `chatsrv:node:<id>` (TTL 2/3 of --node-ttl) every
  --node-ttl/6 and reaps nodes whose heartbeat expired (Lua, exactly one
  reaper wins): their names are freed and every node drops their users, with
  leave notices, within --node-ttl of their death.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import socket
import time
from typing import TYPE_CHECKING

import gevent
from gevent.event import AsyncResult, Event

from .. import protocol as P
from ..hub import GENERAL, ClusterUnavailable, LoginRefused
from . import conn, keys

if TYPE_CHECKING:
    from ..hub import Group, User
    from ..net.session import Session
    from ..server import ChatServer

log = logging.getLogger("chatsrv.backplane")

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
SYNC_TIMEOUT_S = 10.0
KICK_WAIT_S = 5.0
SUBSCRIBE_WAIT_S = 2.0


class Claim:
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

    def __init__(self, server: ChatServer, url: str, node: str | None, ttl: float) -> None:
        self.server = server
        self.hub = server.hub
        self.url = url
        self.node = node or default_node_id()
        self.node_b = self.node.encode()
        self.ttl = ttl
        self.redis = conn.loop_client(url)
        self.pubsub = None
        self.subscribed: set[str] = set()  # group keys
        self.stats = Stats()
        self.down_since: float | None = None
        self.stopping = False
        self.started_at = time.time()
        self._wake = Event()
        self._reconnect = False
        self._first_sync = True
        self._own_gone = 0  # "gone" messages about this node that this node published
        self._claims: dict[str, Claim] = {}  # by token, until their login event is back
        self._tokens = itertools.count(1)
        self._sub_waiters: dict[bytes, Event] = {}  # channel -> set when subscribed
        self._greenlets: list[gevent.Greenlet] = []
        self.hub.join_cluster(self.node)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Join the cluster; returns once registered (or, if Redis is away, at once
        with the hub marked unavailable: the listener keeps trying)."""
        self.hub.unavailable = True  # until the first sync
        self.down_since = time.monotonic()
        ready = Event()
        self._greenlets = [
            gevent.spawn(self._publish_loop),
            gevent.spawn(self._listen_loop, ready),
            gevent.spawn(self._heartbeat_loop),
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
        while (self.hub.outbox or self._wake.is_set()) and time.monotonic() < deadline:
            self._wake.set()
            gevent.sleep(0.02)
        gevent.sleep(0)  # let an in-flight pipeline finish
        if not self.hub.unavailable:
            try:
                self.redis.delete(keys.heartbeat(self.node))
                self._reap(self.node)
            except conn.ERRORS as err:
                log.warning("leaving the cluster: %s", err)
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        self.redis.close()
        log.info("left the cluster")

    def wake(self) -> None:
        self._wake.set()

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

    def claim(self, name: str, session: Session) -> None:
        """Hold `name` in Redis for this node (in the publisher's order, after any
        logout already queued); the session's greenlet waits. Raises LoginRefused."""
        hub = self.hub
        if hub.unavailable:
            raise LoginRefused(P.CLUSTER_UNAVAILABLE)
        claim = Claim(name, session.peer, time.time(), str(next(self._tokens)))
        self._claims[claim.token] = claim
        hub.outbox.append(("claim", claim))
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
            self._claims.pop(claim.token, None)
        if not won:
            raise LoginRefused(f"error: username taken: {name}")
        hub.forget_remote(claim.key)  # a stale mirror entry: Redis says the name is ours

    def read_history(self, group: Group, count: int) -> list[tuple[float, str, str]]:
        """The group's last `count` messages from Redis, read after everything this
        node published before (same pipeline order). The caller's greenlet waits."""
        if self.hub.unavailable:
            raise ClusterUnavailable("cluster unavailable")
        result = AsyncResult()
        self.hub.outbox.append(("history", group, count, result))
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
        self.hub.outbox.append(("delete", group, result))
        self.wake()
        try:
            result.get(timeout=conn.COMMAND_TIMEOUT_S + 1)
        except gevent.Timeout:
            raise ClusterUnavailable("Redis did not answer") from None

    def _abandon(self, claim: Claim) -> None:
        claim.abandoned = True
        if claim.won:  # Redis gave us the name, but nobody will use it
            self.abandon(claim.name)

    def follow(self, group: Group) -> None:
        """Return once this node hears the group's channel (or Redis failed to say so):
        the publisher subscribes before it sends anything queued after a join."""
        done = Event()
        self.hub.outbox.append(("follow", group, done))
        self.wake()
        done.wait(SUBSCRIBE_WAIT_S + 1)

    def abandon(self, name: str) -> None:
        """The name was claimed but the login did not happen: free it again."""
        self.hub.outbox.append(("release", P.name_key(name)))
        self.wake()

    def kick(self, name: str) -> tuple[str, str] | None:
        user = self.hub.remote_users.get(P.name_key(P.normalize(name)))
        if user is None:
            return None
        self._control(keys.node_channel(user.node), {"t": "kick", "u": user.name})
        deadline = time.monotonic() + KICK_WAIT_S
        while self.hub.remote_users.get(user.key) is user and time.monotonic() < deadline:
            gevent.sleep(0.02)  # the name is free once its node's logout arrived
        return user.name, user.node

    def announce(self, text: str, group: Group | None) -> int:
        self._control(keys.CTL, {"t": "announce", "n": self.node, "text": text,
                                 "g": group.name if group is not None else None})
        return len(group.remote) if group is not None else len(self.hub.remote_users)

    def _control(self, channel: str, message: dict) -> None:
        self.hub.outbox.append(("raw", channel, keys.dumps(message)))
        self.wake()

    # ------------------------------------------------------------ publisher

    def _publish_loop(self) -> None:
        hub = self.hub
        while True:
            self._wake.wait()
            self._wake.clear()
            items = hub.outbox
            if not items:
                continue
            hub.outbox = []
            try:
                self._publish(items)
            except Exception:
                log.exception("backplane publisher error")

    def _publish(self, items: list[tuple]) -> None:
        """Send `items` in order; a `sync` is done where it stands in the sequence."""
        start = 0
        for i, item in enumerate(items):
            if item[0] == "sync":
                self._send(items[start:i])
                self._sync(item[1])
                start = i + 1
        self._send(items[start:])

    def _send(self, items: list[tuple]) -> None:
        if not items:
            return
        if self.hub.unavailable:
            self._drop(items)
            return
        self._subscribe_first(items)
        for item in items:
            if item[0] == "follow":
                item[2].set()
        pipe = self.redis.pipeline(transaction=False)
        claims: list[tuple[int, Claim]] = []
        reads: list[tuple[int, AsyncResult]] = []
        touched: list[Group] = []
        trim: set[str] = set()
        runs: dict[str, tuple[list, list]] = {}  # group key -> (lines, history entries)
        node = self.node
        for item in items:
            kind = item[0]
            if kind == "public":
                run = runs.get(item[1].key)
                if run is None:
                    run = runs[item[1].key] = ([], [])
                run[0].append(item[2])
                run[1].append((item[3], item[4]))
                continue
            if runs:  # anything else keeps its place after the messages before it
                self._queue_runs(pipe, runs, trim)
            if kind == "history":
                pipe.lrange(keys.history(item[1].key), -item[2], -1)
                reads.append((len(pipe) - 1, item[3]))
            elif kind == "delete":
                gkey = item[1].key
                trim.discard(gkey)
                pipe.eval(keys.DELETE_GROUP, 2, keys.GROUPS, keys.history(gkey), gkey, keys.CTL,
                          keys.dumps({"t": "delgroup", "n": node, "g": gkey}))
                reads.append((len(pipe) - 1, item[2]))
            elif kind == "unfollow":
                touched.append(item[1])
            elif kind == "join" or kind == "leave":
                user, group = item[1], item[2]
                pipe.publish(keys.CTL, keys.dumps({"t": kind, "n": node, "k": user.key,
                                                   "g": group.key}))
                touched.append(group)
            elif kind == "private":
                remote = item[1]
                pipe.publish(keys.node_channel(remote.node),
                             b"p" + remote.key.encode() + b"\0" + item[2])
            elif kind == "logout" or kind == "release":
                key = item[1].key if kind == "logout" else item[1]
                self._queue_release(pipe, key)
            elif kind == "claim":
                claim = item[1]
                self._queue_claim(pipe, claim.key, claim.name, claim.since, claim.peer,
                                  claim.token)
                claims.append((len(pipe) - 1, claim))
            elif kind == "raw":
                pipe.publish(item[1], item[2])
            elif kind == "state":
                pipe.publish(keys.CTL, self._state_message())
        if runs:
            self._queue_runs(pipe, runs, trim)
        keep = self.hub.history_size
        for key in trim:
            pipe.ltrim(keys.history(key), -keep, -1)
        try:
            results = pipe.execute(raise_on_error=False)
        except conn.ERRORS as err:
            self.failed(err)
            for _, claim in claims:
                claim.result.set_exception(ClusterUnavailable(str(err)))
            for _, result in reads:
                result.set_exception(ClusterUnavailable(str(err)))
            self.stats.dropped += len(items)
            return
        self.stats.batches += 1
        self.stats.published += len(items)
        for index, claim in claims:
            self._claimed(claim, results[index])
        for index, result in reads:
            if isinstance(results[index], Exception):
                result.set_exception(ClusterUnavailable(str(results[index])))
            else:
                result.set(results[index])
        for group in touched:
            self._unfollow(group)

    def _queue_runs(self, pipe, runs: dict[str, tuple[list, list]], trim: set[str]) -> None:
        """A run of public messages, one PUBLISH (and one RPUSH) per group: the lines
        of one group stay in order, and a receiving node parses one pub/sub message
        and appends one buffer per member, however many lines it holds."""
        now = time.time()
        keep = self.hub.history_size
        for key, (lines, entries) in runs.items():
            if keep:  # kept before it is sent: whoever saw it finds it in `history`
                pipe.rpush(keys.history(key), *(keys.dumps([now, u, t]) for u, t in entries))
                trim.add(key)
            pipe.publish(keys.group_channel(key),
                         b"%b\0%d\0%b" % (self.node_b, len(lines), b"".join(lines)))
        runs.clear()

    def _queue_claim(self, pipe, key: str, name: str, since: float, peer: str,
                     token: str | None) -> None:
        """A login (`token`: announced, with joining General) or a re-registration."""
        announce = token is not None
        record = keys.dumps({"node": self.node, "name": name, "since": since, "peer": peer})
        message = keys.dumps({"t": "login", "n": self.node, "u": name, "s": since,
                              "p": peer, "g": P.name_key(GENERAL), "c": token}) if announce else ""
        # A new login needs a free name; a re-registration keeps this node's own.
        pipe.eval(keys.CLAIM, 2, keys.USERS, keys.node_users(self.node), key, record,
                  self.node, keys.CTL, message, "0" if announce else "1")

    def _queue_release(self, pipe, key: str) -> None:
        pipe.eval(keys.RELEASE, 2, keys.USERS, keys.node_users(self.node), key, self.node,
                  keys.CTL, keys.dumps({"t": "logout", "n": self.node, "k": key}))

    def _claimed(self, claim: Claim, result) -> None:
        if isinstance(result, Exception):
            claim.result.set_exception(ClusterUnavailable(str(result)))
        elif result != 1:
            claim.result.set(False)
        elif claim.abandoned:
            self.abandon(claim.name)
        else:
            claim.won = True
            claim.settle()

    def _drop(self, items: list[tuple]) -> None:
        """Redis is away: what other nodes should have heard is lost (the re-sync
        after the outage restores users and memberships; messages are gone)."""
        for item in items:
            if item[0] == "claim":
                item[1].result.set_exception(ClusterUnavailable("cluster unavailable"))
            elif item[0] == "follow":
                item[2].set()
            elif item[0] == "history":
                item[3].set_exception(ClusterUnavailable("cluster unavailable"))
            elif item[0] == "delete":
                item[2].set_exception(ClusterUnavailable("cluster unavailable"))
        self.stats.dropped += len(items)

    def _subscribe_first(self, items: list[tuple]) -> None:
        """A node follows a group's channel while it has local members. A join (or a
        login, which joins General) that makes the first one is published only once
        Redis confirmed the subscription: whatever another node sends after hearing
        of the join reaches this node."""
        pubsub = self.pubsub
        if pubsub is None:
            return
        wanted = []
        for item in items:
            kind = item[0]
            if kind == "join" or kind == "follow":
                group = item[2] if kind == "join" else item[1]
            elif kind == "claim":
                group = self.hub.groups.get(P.name_key(GENERAL))
            else:
                continue
            if group is not None and group.key not in self.subscribed:
                self.subscribed.add(group.key)
                wanted.append(keys.group_channel(group.key).encode())
        if not wanted:
            return
        waiters = [self._sub_waiters.setdefault(ch, Event()) for ch in wanted]
        try:
            pubsub.subscribe(*wanted)
        except conn.ERRORS as err:
            self.failed(err)
            return
        for waiter in waiters:
            waiter.wait(SUBSCRIBE_WAIT_S)
        for channel in wanted:
            self._sub_waiters.pop(channel, None)

    def _unfollow(self, group: Group) -> None:
        """Leave a group's channel once it has no local members."""
        key = group.key
        if group.members or key not in self.subscribed or self.pubsub is None:
            return
        self.subscribed.discard(key)
        try:
            self.pubsub.unsubscribe(keys.group_channel(key))
        except conn.ERRORS as err:
            self.failed(err)

    def _state_message(self) -> str:
        users = [[u.name, u.since, u.conn.peer if u.conn is not None else "",
                  list(u.groups)] for u in self.hub.users.values()]
        return keys.dumps({"t": "state", "n": self.node, "users": users})

    # ------------------------------------------------------------ (re-)registration

    def _sync(self, done: AsyncResult | None) -> None:
        """Register this node and all its local users and groups again, atomically:
        after start-up, an outage, or being reaped while alive (a long pause)."""
        try:
            conflicts = self._register()
        except conn.ERRORS as err:
            if done is not None:
                done.set_exception(ClusterUnavailable(str(err)))
            return
        self._recovered()
        for user in conflicts:
            log.warning("user %s: name taken by another node during the outage; disconnecting",
                        user.name)
            self.server.kick(user.name, local_only=True)
        if done is not None:
            done.set(True)

    def _register(self) -> list[User]:
        hub, node = self.hub, self.node
        hub.unconfirmed.clear()  # the state message below is everyone's news now
        users = list(hub.users.values())
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.heartbeat(node), keys.dumps({"started": self.started_at,
                                                   "pid": os.getpid()}),
                 px=self._heartbeat_ms())
        pipe.sadd(keys.NODES, node)
        # Names this node held before (an earlier run with this --node-id, or users
        # who left during the outage) are freed, then the current ones claimed.
        for key in self._held_keys():
            pipe.eval(keys.RELEASE, 2, keys.USERS, keys.node_users(node), key, node, "", "")
        first = len(pipe)
        for user in users:
            peer = user.conn.peer if user.conn is not None else ""
            self._queue_claim(pipe, user.key, user.name, user.since, peer, None)
        for group in hub.groups.values():  # put them back if Redis lost its data
            pipe.hsetnx(keys.GROUPS, group.key, keys.dumps(
                {"name": group.name, "by": group.created_by, "at": group.created_at}))
        if self._first_sync:  # other nodes drop the users of this id's earlier run
            self._own_gone += 1
            pipe.publish(keys.CTL, keys.dumps({"t": "gone", "n": node}))
        pipe.publish(keys.CTL, self._state_message())
        pipe.publish(keys.CTL, keys.dumps({"t": "hello", "n": node}))
        pipe.smembers(keys.NODES)
        results = pipe.execute()
        self._first_sync = False
        alive = {n.decode() for n in results[-1]}
        for gone in {u.node for u in hub.remote_users.values()} - alive:
            hub.node_gone(gone)
        self.server.schedule_flush()
        return [u for u, ok in zip(users, results[first:first + len(users)], strict=True)
                if ok != 1]

    def _held_keys(self) -> list[str]:
        held = self.redis.smembers(keys.node_users(self.node))
        mine = set(self.hub.users)
        return [k.decode() for k in held if k.decode() not in mine]

    def _heartbeat_ms(self) -> int:
        return max(int(self.ttl * 1000 * 2 / 3), 100)

    # ------------------------------------------------------------ listener

    def _listen_loop(self, ready: Event) -> None:
        backoff = BACKOFF_MIN_S
        while not self.stopping:
            try:
                self._connect()
                ready.set()
                backoff = BACKOFF_MIN_S
                self._consume()
            except (*conn.ERRORS, ClusterUnavailable) as err:
                self.failed(err)
            except Exception:
                log.exception("backplane listener error")
                self.failed(RuntimeError("listener error"))
            self._close_pubsub()
            if self.stopping:
                return
            gevent.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _connect(self) -> None:
        self._reconnect = False
        pubsub = self.redis.pubsub()
        wanted = [g.key for g in self.hub.groups.values() if g.members]
        pubsub.subscribe(keys.CTL, keys.node_channel(self.node),
                         *(keys.group_channel(k) for k in wanted))
        self.pubsub = pubsub
        self.subscribed = set(wanted)
        done = AsyncResult()
        self.hub.outbox.append(("sync", done))  # in order with the publisher's stream
        self.wake()
        done.get(timeout=SYNC_TIMEOUT_S)

    def _recovered(self) -> None:
        if self.hub.unavailable:
            self.hub.unavailable = False
            spent = time.monotonic() - self.down_since if self.down_since else 0.0
            if self.stats.outages:
                log.warning("cluster available again after %.1f s; node %s registered again",
                            spent, self.node)
            self.down_since = None

    def _consume(self) -> None:
        pubsub = self.pubsub
        while not self.stopping and not self._reconnect:
            message = pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            kind = message["type"]
            if kind == "message":
                self._on_message(message["channel"], message["data"])
            elif kind == "subscribe":
                waiter = self._sub_waiters.get(message["channel"])
                if waiter is not None:
                    waiter.set()

    def _close_pubsub(self) -> None:
        pubsub, self.pubsub = self.pubsub, None
        if pubsub is not None:
            try:
                pubsub.reset()
            except Exception:  # a dead connection: nothing to tell Redis
                pass

    def failed(self, err: Exception) -> None:
        """Redis went away: say so once, mark the hub unavailable, let the listener retry."""
        self._reconnect = True
        if self.hub.unavailable:
            return
        self.hub.unavailable = True
        self.down_since = time.monotonic()
        self.stats.outages += 1
        log.error("cluster unavailable: Redis %s: %s; local clients stay connected, "
                  "reconnecting", conn.describe(self.url), err)

    def _on_message(self, channel: bytes, data: bytes) -> None:
        self.stats.received += 1
        hub = self.hub
        if channel.startswith(keys.GROUP_CHANNEL_PREFIX):
            node, _, rest = data.partition(b"\0")
            if node != self.node_b:
                count, _, lines = rest.partition(b"\0")
                hub.remote_public(channel[len(keys.GROUP_CHANNEL_PREFIX):].decode(), lines,
                                  int(count))
        elif channel.startswith(keys.NODE_CHANNEL_PREFIX):
            if data[:1] == b"p":
                key, _, line = data[1:].partition(b"\0")
                hub.remote_private(key.decode(), line)
            else:
                self._on_direct(json.loads(data))
        else:
            self._on_control(json.loads(data))
        self.server.schedule_flush()

    def _on_direct(self, message: dict) -> None:
        if message.get("t") == "kick":
            self.server.kick(message["u"], local_only=True)

    def _on_control(self, m: dict) -> None:
        hub, kind, node = self.hub, m.get("t"), m.get("n")
        if node == self.node:
            if kind == "join":
                hub.join_confirmed(m["k"], m["g"])
            elif kind == "login":
                claim = self._claims.get(m.get("c"))
                if claim is not None:
                    claim.echoed = True
                    claim.settle()
            elif kind == "gone" and self._own_gone:
                self._own_gone -= 1
            elif kind == "gone" and not self.stopping:
                log.warning("this node was reaped (heartbeats missed); registering again")
                self.hub.outbox.append(("sync", None))
                self.wake()
            return
        if kind == "join":
            hub.remote_join(m["k"], m["g"], node)
        elif kind == "leave":
            hub.remote_leave(m["k"], m["g"], node)
        elif kind == "login":
            hub.remote_login(node, m["u"], m["s"], m.get("p", ""))
            if m.get("g"):
                hub.remote_join(P.name_key(m["u"]), m["g"], node)
        elif kind == "logout":
            hub.remote_logout(m["k"], node)
        elif kind == "group":
            hub.remote_group(m["name"], m.get("by", ""), m.get("at", 0.0))
        elif kind == "delgroup":
            hub.remote_group_deleted(m["g"])
        elif kind == "state":
            hub.node_state(node, m["users"])
        elif kind == "hello":
            hub.outbox.append(("state",))
            self.wake()
        elif kind == "gone":
            names = hub.node_gone(node)
            if names:
                log.info("node %s left the cluster: %d users gone", node, len(names))
        elif kind == "announce":
            group = m.get("g")
            if group is None or P.name_key(P.normalize(group)) in hub.groups:
                hub.announce(m["text"], group)

    # ------------------------------------------------------------ heartbeat, reaper

    def _heartbeat_loop(self) -> None:
        while not self.stopping:
            gevent.sleep(self.ttl / 6)
            if self.hub.unavailable or self.stopping:
                continue
            try:
                self._beat()
            except conn.ERRORS as err:
                self.failed(err)
            except Exception:
                log.exception("backplane heartbeat error")

    def _beat(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(keys.heartbeat(self.node), b"1", px=self._heartbeat_ms())
        pipe.sadd(keys.NODES, self.node)
        pipe.smembers(keys.NODES)
        _, added, nodes = pipe.execute()
        if added:
            log.warning("this node was missing from the cluster; registering again")
            self.hub.outbox.append(("sync", None))
            self.wake()
        others = [n.decode() for n in nodes if n.decode() != self.node]
        if not others:
            return
        pipe = self.redis.pipeline(transaction=False)
        for other in others:
            pipe.exists(keys.heartbeat(other))
        for other, alive in zip(others, pipe.execute(), strict=True):
            if not alive:
                self._reap(other)

    def _reap(self, dead: str) -> None:
        if dead == self.node:
            self._own_gone += 1
        freed = self.redis.eval(keys.REAP, 4, keys.heartbeat(dead), keys.NODES,
                                keys.node_users(dead), keys.USERS, dead, keys.CTL,
                                keys.dumps({"t": "gone", "n": dead}))
        if freed >= 0 and dead != self.node:
            self.stats.reaped += 1
            log.warning("node %s stopped heartbeating: reaped, %d names freed", dead, freed)

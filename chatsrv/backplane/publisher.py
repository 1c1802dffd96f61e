"""The publisher: drains `Hub.outbox` once per loop turn into one ordered Redis pipeline.

Woken by the server's flush (`RedisBackplane.wake`), it takes the whole outbox
and sends it in one pipeline, in outbox order: public messages to the group's
channel, private ones to the receiver's node channel, joins, leaves, logouts
(which free the name) and name claims to the control channel/keys. One
greenlet on one connection, in outbox order: that is what keeps every sender's
order across nodes. Nothing on the event loop ever waits for it: a `public`
reaches local members in the same turn and Redis gets it after.

Events (chatsrv/core/events.py) are dispatched through `Publisher.queue`, a
table from event class to the method that queues its commands. Public messages
of one turn are coalesced per group (one RPUSH, one PUBLISH); any other event
closes the run, so nothing moves across it. A `Sync` re-registers the node
where it stands in the sequence.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import gevent
from gevent.event import AsyncResult, Event

from ..core import events as E
from ..core import protocol as P
from ..core.errors import ClusterUnavailable
from ..core.protocol import GENERAL
from . import conn, keys

if TYPE_CHECKING:
    from ..core.model import Group, User
    from .node import NameClaim, RedisBackplane

log = logging.getLogger("chatsrv.backplane")

SUBSCRIBE_WAIT_S = 2.0
# Public messages held while Redis is away, sent in order when it is back: at most
# this many, and this many bytes of delivery lines (what a node may hold for the
# others through an outage). Past either, a `public` answers `error: cluster
# unavailable` until the held ones are sent: never a silent drop.
HOLD_MAX = 10_000
HOLD_BYTES = 8 << 20
# After this node is registered again, the held messages wait until every other
# node with users has published its state (it is subscribed again then: it
# subscribes before it registers, or it answered our `hello`), at most this long.
HOLD_WAIT_S = 10.0


class Batch:
    """One pipeline being filled from a run of events, and what to do with its results."""

    __slots__ = ("pipe", "claims", "reads", "touched", "trim", "runs")

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.claims: list[tuple[int, NameClaim]] = []  # pipeline index -> claim
        self.reads: list[tuple[int, AsyncResult]] = []  # pipeline index -> who waits
        self.touched: list[E.GroupRef] = []  # groups whose channel this node may leave
        self.trim: set[str] = set()  # history lists to trim to --history
        self.runs: dict[str, tuple[list, list]] = {}  # group key -> (lines, history entries)


def _unavailable(result) -> None:
    result.set_exception(ClusterUnavailable("cluster unavailable"))


# What a dropped event's waiter hears when Redis is away (events not listed: nobody waits).
_DROPPED: dict[type, Callable[[Any], None]] = {
    E.Claim: lambda e: _unavailable(e.claim.result),
    E.Follow: lambda e: e.done.set(),
    E.History: lambda e: _unavailable(e.result),
    E.Delete: lambda e: _unavailable(e.result),
    E.Roles: lambda e: _unavailable(e.result),
}


class Publisher:
    def __init__(self, backplane: RedisBackplane) -> None:
        self.bp = backplane
        self.hub = backplane.hub
        self.queue: dict[type, Callable[[Batch, Any], None]] = {
            E.Public: self._public,
            E.Join: self._membership,
            E.Leave: self._membership,
            E.Logout: self._logout,
            E.Private: self._private,
            E.Unfollow: self._unfollow_later,
            E.Claim: self._claim,
            E.Release: self._release,
            E.History: self._history,
            E.Delete: self._delete,
            E.Follow: self._followed,
            E.Raw: self._raw,
            E.State: self._state,
            E.Roles: self._roles,
            E.Removed: self._removed,
        }
        # Public messages Redis did not take (an outage), oldest first: see HOLD_MAX.
        self.held: list[E.Public] = []
        self.held_bytes = 0
        self.held_waiting: set[str] = set()  # nodes not heard from since we are back
        self.held_deadline = 0.0
        # The group a first local member makes this node subscribe to before publishing.
        self._follows: dict[type, Callable[[Any], Group | None]] = {
            E.Join: lambda e: e.group,
            E.Follow: lambda e: e.group,
            E.Claim: lambda e: self.hub.groups.get(P.name_key(GENERAL)),  # joins General
        }

    def run(self) -> None:
        bp, hub = self.bp, self.hub
        while True:
            bp.woken.wait()
            bp.woken.clear()
            items = hub.outbox
            if not items and not self.held:
                continue
            hub.outbox = []
            try:
                if items:
                    self.publish(items)
                if self.held and self._held_due():
                    self._send_held()
            except Exception:
                log.exception("backplane publisher error")

    def publish(self, items: list[E.Event]) -> None:
        """Send `items` in order; a `Sync` is done where it stands in the sequence."""
        start = 0
        for i, item in enumerate(items):
            if type(item) is E.Sync:
                self._send(items[start:i])
                self.sync(item.done)
                start = i + 1
        self._send(items[start:])

    def _send(self, items: list[E.Event]) -> None:
        if not items:
            return
        if self.hub.unavailable:
            self._drop(items)
            return
        if self.held:  # newer messages wait behind the held ones: one order
            self._hold(items)
            items = [item for item in items if type(item) is not E.Public]
            if not items:
                return
        self._subscribe_first(items)
        batch = Batch(self.bp.redis.pipeline(transaction=False))
        queue = self.queue
        runs = batch.runs
        for item in items:
            kind = type(item)
            if runs and kind is not E.Public:  # it keeps its place after the messages before it
                self._queue_runs(batch)
            queue[kind](batch, item)
        if runs:
            self._queue_runs(batch)
        pipe = batch.pipe
        keep = self.hub.history_size
        for key in batch.trim:
            pipe.ltrim(keys.history(key), -keep, -1)
        try:
            results = pipe.execute(raise_on_error=False)
        except conn.ERRORS as err:
            self.bp.failed(err)
            for _, claim in batch.claims:
                claim.result.set_exception(ClusterUnavailable(str(err)))
            for _, result in batch.reads:
                result.set_exception(ClusterUnavailable(str(err)))
            # Whether Redis took these before it failed is unknown (a paused Redis
            # runs what it had read when it resumes): sent again, a message could
            # arrive twice, so their senders are told instead.
            for item in items:
                if type(item) is E.Public:
                    self._tell_sender(cast("E.Public", item))
            self.bp.stats.dropped += len(items)
            return
        stats = self.bp.stats
        stats.batches += 1
        stats.published += len(items)
        for index, claim in batch.claims:
            self._claimed(claim, results[index])
        for index, result in batch.reads:
            if isinstance(results[index], Exception):
                result.set_exception(ClusterUnavailable(str(results[index])))
            else:
                result.set(results[index])
        for group in batch.touched:
            self.unfollow(group)

    # ------------------------------------------------------------ one method per event

    def _public(self, batch: Batch, event: E.Public) -> None:
        run = batch.runs.get(event.group.key)
        if run is None:
            run = batch.runs[event.group.key] = ([], [])
        run[0].append(event.data)
        run[1].append((event.sender, event.text))

    def _membership(self, batch: Batch, event: E.Join | E.Leave) -> None:
        kind = "join" if type(event) is E.Join else "leave"
        batch.pipe.publish(keys.CTL, keys.dumps({"type": kind, "node": self.bp.node,
                                                 "user": event.user.key,
                                                 "group": event.group.key}))
        batch.touched.append(event.group)

    def _logout(self, batch: Batch, event: E.Logout) -> None:
        self._queue_release(batch.pipe, event.user.key)

    def _release(self, batch: Batch, event: E.Release) -> None:
        self._queue_release(batch.pipe, event.key)

    def _private(self, batch: Batch, event: E.Private) -> None:
        remote = event.remote
        batch.pipe.publish(keys.node_channel(remote.node),
                           b"p" + remote.key.encode() + b"\0" + event.data)

    def _unfollow_later(self, batch: Batch, event: E.Unfollow) -> None:
        batch.touched.append(event.group)

    def _claim(self, batch: Batch, event: E.Claim) -> None:
        claim = event.claim
        self._queue_claim(batch.pipe, claim.key, claim.name, claim.since, claim.peer,
                          claim.token)
        batch.claims.append((len(batch.pipe) - 1, claim))

    def _history(self, batch: Batch, event: E.History) -> None:
        batch.pipe.lrange(keys.history(event.group.key), -event.count, -1)
        batch.reads.append((len(batch.pipe) - 1, event.result))

    def _delete(self, batch: Batch, event: E.Delete) -> None:
        gkey = event.group.key
        batch.trim.discard(gkey)
        batch.pipe.eval(keys.DELETE_GROUP, 3, keys.GROUPS, keys.history(gkey), keys.roles(gkey),
                        gkey, keys.CTL,
                        keys.dumps({"type": "delgroup", "node": self.bp.node, "group": gkey}))
        batch.reads.append((len(batch.pipe) - 1, event.result))

    def _roles(self, batch: Batch, event: E.Roles) -> None:
        change = event.change
        gkey = change.group.key
        message = keys.dumps({
            "type": "roles", "node": self.bp.node, "group": gkey, "field": change.field,
            "value": change.value, "actor": change.actor, "target": change.target,
            "notice": change.notice, "reason": change.reason, "token": event.token})
        batch.pipe.eval(keys.ROLES, 2, keys.GROUPS, keys.roles(gkey), gkey, change.field,
                        change.value or "", "1" if change.value is None else "0", keys.CTL,
                        message[:-1] + ',"v":', "}")
        batch.reads.append((len(batch.pipe) - 1, event.result))

    def _removed(self, batch: Batch, event: E.Removed) -> None:
        batch.pipe.publish(keys.CTL, keys.dumps({
            "type": "removed", "node": self.bp.node, "user": event.key, "name": event.name,
            "group": event.gkey, "actor": event.actor, "was": event.was}))
        if event.group is not None:
            batch.touched.append(event.group)

    def _followed(self, batch: Batch, event: E.Follow) -> None:
        event.done.set()  # `_subscribe_first` has subscribed (or given up)

    def _raw(self, batch: Batch, event: E.Raw) -> None:
        batch.pipe.publish(event.channel, event.message)

    def _state(self, batch: Batch, event: E.State) -> None:
        batch.pipe.publish(keys.CTL, self.state_message())

    # ------------------------------------------------------------ helpers

    def _queue_runs(self, batch: Batch) -> None:
        """A run of public messages, one PUBLISH (and one RPUSH) per group: the lines
        of one group stay in order, and a receiving node parses one pub/sub message
        and appends one buffer per member, however many lines it holds."""
        now = time.time()
        keep = self.hub.history_size
        pipe, node_b = batch.pipe, self.bp.node_b
        for key, (lines, entries) in batch.runs.items():
            if keep:  # kept before it is sent: whoever saw it finds it in `history`
                pipe.rpush(keys.history(key), *(keys.dumps([now, u, t]) for u, t in entries))
                batch.trim.add(key)
            pipe.publish(keys.group_channel(key),
                         b"%b\0%d\0%b" % (node_b, len(lines), b"".join(lines)))
        batch.runs.clear()

    def _queue_claim(self, pipe, key: str, name: str, since: float, peer: str,
                     token: str | None) -> None:
        """A login (`token`: announced, with joining General) or a re-registration."""
        announce = token is not None
        node = self.bp.node
        record = keys.dumps({"node": node, "name": name, "since": since, "peer": peer})
        message = keys.dumps({"type": "login", "node": node, "name": name, "since": since,
                              "peer": peer, "group": P.name_key(GENERAL),
                              "token": token}) if announce else ""
        # A new login needs a free name; a re-registration keeps this node's own.
        pipe.eval(keys.CLAIM, 2, keys.USERS, keys.node_users(node), key, record,
                  node, keys.CTL, message, "0" if announce else "1")

    def _queue_release(self, pipe, key: str) -> None:
        node = self.bp.node
        pipe.eval(keys.RELEASE, 2, keys.USERS, keys.node_users(node), key, node,
                  keys.CTL, keys.dumps({"type": "logout", "node": node, "user": key}))

    def _claimed(self, claim: NameClaim, result) -> None:
        if isinstance(result, Exception):
            claim.result.set_exception(ClusterUnavailable(str(result)))
        elif result != 1:
            claim.result.set(False)
        elif claim.abandoned:
            self.bp.abandon(claim.name)
        else:
            claim.won = True
            claim.settle()

    def _drop(self, items: list[E.Event]) -> None:
        """Redis is away: public messages are held for later (`_hold`); the rest of
        what other nodes should have heard is lost (the re-sync after the outage
        restores users and memberships)."""
        for item in items:
            fail = _DROPPED.get(type(item))
            if fail is not None:
                fail(item)
        self.bp.stats.dropped += len(items) - self._hold(items)

    def _hold(self, items: list[E.Event]) -> int:
        """Keep the public messages of `items`, in order, for when Redis is back;
        a sender whose message finds the buffer full is told. Returns how many
        were held."""
        held = 0
        hub = self.hub
        for item in items:
            if type(item) is not E.Public:
                continue
            event = cast("E.Public", item)
            size = len(event.data) + len(event.text)
            if len(self.held) < HOLD_MAX and self.held_bytes + size <= HOLD_BYTES:
                self.held.append(event)
                self.held_bytes += size
                held += 1
                continue
            hub.held_full = True  # the next `public` is refused at once (Hub.handle_public)
            self._tell_sender(event)
        return held

    def _tell_sender(self, event: E.Public) -> None:
        """A public message reached this node's members only: its sender hears so."""
        hub = self.hub
        user = hub.users.get(P.name_key(event.sender))
        if user is not None:
            hub.reply(user, P.CLUSTER_UNAVAILABLE)
            self.bp.schedule_flush()

    def heard(self, node: str) -> None:
        """`node` published its state: it follows its groups' channels again."""
        if self.held_waiting:
            self.held_waiting.discard(node)
            if not self.held_waiting:
                self.bp.wake()

    def _held_due(self) -> bool:
        return not self.hub.unavailable and (
            not self.held_waiting or time.monotonic() >= self.held_deadline)

    def _send_held(self) -> None:
        """Registered again: the held public messages go first, in order (those of
        groups deleted meanwhile are left out)."""
        held, self.held, self.held_bytes = self.held, [], 0
        self.held_waiting = set()
        self.hub.held_full = False
        groups = self.hub.groups
        held = [e for e in held if groups.get(e.group.key) is e.group]
        if held:
            log.info("sending %d public messages held through the outage", len(held))
            self._send(cast("list[E.Event]", held))

    def _subscribe_first(self, items: list[E.Event]) -> None:
        """A node follows a group's channel while it has local members. A join (or a
        login, which joins General) that makes the first one is published only once
        Redis confirmed the subscription: whatever another node sends after hearing
        of the join reaches this node."""
        bp = self.bp
        pubsub = bp.pubsub
        if pubsub is None:
            return
        follows = self._follows
        wanted = []
        for item in items:
            follow = follows.get(type(item))
            if follow is None:
                continue
            group = follow(item)
            if group is not None and group.key not in bp.subscribed:
                bp.subscribed.add(group.key)
                wanted.append(keys.group_channel(group.key).encode())
        if not wanted:
            return
        waiters = [bp.sub_waiters.setdefault(ch, Event()) for ch in wanted]
        try:
            pubsub.subscribe(*wanted)
        except conn.ERRORS as err:
            bp.failed(err)
            return
        for waiter in waiters:
            waiter.wait(SUBSCRIBE_WAIT_S)
        for channel in wanted:
            bp.sub_waiters.pop(channel, None)

    def unfollow(self, group: E.GroupRef) -> None:
        """Leave a group's channel once it has no local members."""
        bp = self.bp
        key = group.key
        if group.members or key not in bp.subscribed or bp.pubsub is None:
            return
        bp.subscribed.discard(key)
        try:
            bp.pubsub.unsubscribe(keys.group_channel(key))
        except conn.ERRORS as err:
            bp.failed(err)

    def state_message(self) -> str:
        users = [[u.name, u.since, u.conn.peer if u.conn is not None else "",
                  list(u.groups)] for u in self.hub.users.values()]
        return keys.dumps({"type": "state", "node": self.bp.node, "users": users})

    # ------------------------------------------------------------ (re-)registration

    def sync(self, done: AsyncResult | None) -> None:
        """Register this node and all its local users and groups again, atomically:
        after start-up, an outage, or being reaped while alive (a long pause)."""
        bp = self.bp
        # Nodes with users before this registration: the held messages wait for them
        # (registering may drop one that has not registered again yet: see below).
        peers = {u.node for u in self.hub.remote_users.values()}
        try:
            conflicts = self._register()
        except conn.ERRORS as err:
            if done is not None:
                done.set_exception(ClusterUnavailable(str(err)))
            return
        bp.recovered()
        if self.held:
            self.held_waiting = peers | {u.node for u in self.hub.remote_users.values()}
            self.held_deadline = time.monotonic() + HOLD_WAIT_S
            gevent.spawn_later(HOLD_WAIT_S, bp.wake)
            if not self.held_waiting:
                self._send_held()
        for user in conflicts:
            log.warning("user %s: name taken by another node during the outage; disconnecting",
                        user.name)
            bp.kick_local(user.name, "replaced")
        if done is not None:
            done.set(True)

    def _register(self) -> list[User]:
        bp, hub = self.bp, self.hub
        node = bp.node
        hub.unconfirmed.clear()  # the state message below is everyone's news now
        users = list(hub.users.values())
        pipe = bp.redis.pipeline(transaction=True)
        pipe.set(keys.heartbeat(node), keys.dumps({"started": bp.started_at,
                                                   "pid": os.getpid()}),
                 px=bp.heartbeat_ms())
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
                {"name": group.name, "by": group.created_by, "at": group.created_at,
                 "owner": group.owner}))
        if bp.first_sync:  # other nodes drop the users of this id's earlier run
            bp.own_gone += 1
            pipe.publish(keys.CTL, keys.dumps({"type": "gone", "node": node}))
        pipe.publish(keys.CTL, self.state_message())
        pipe.publish(keys.CTL, keys.dumps({"type": "hello", "node": node}))
        pipe.smembers(keys.NODES)
        results = pipe.execute()
        bp.first_sync = False
        alive = {n.decode() for n in results[-1]}
        for gone in {u.node for u in hub.remote_users.values()} - alive:
            hub.node_gone(gone)
        bp.schedule_flush()
        return [u for u, ok in zip(users, results[first:first + len(users)], strict=True)
                if ok != 1]

    def _held_keys(self) -> list[str]:
        # bytes: the client does not decode responses (conn.py), a setting redis's
        # types cannot follow.
        held = cast("set[bytes]", self.bp.redis.smembers(keys.node_users(self.bp.node)))
        mine = set(self.hub.users)
        return [k.decode() for k in held if k.decode() not in mine]

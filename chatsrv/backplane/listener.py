"""The listener: applies what the other nodes publish, through the hub's `remote_*` methods.

One pub/sub connection for the control channel, this node's channel and the
channels of groups that have local members. Public and private messages are
applied as they come (a group channel's lines are one buffer per member);
control messages are JSON dispatched by their `type` through two tables: what
another node did (`_others`) and this node's own events coming back
(`_own`: a login's echo settles its claim, a join's confirms it). When Redis
goes away it marks the hub unavailable, retries with backoff, subscribes again
and has the publisher re-register this node (`Sync`).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
from gevent.event import AsyncResult, Event

from ..core import events as E
from ..core import protocol as P
from ..core.errors import ClusterUnavailable
from . import conn, keys

if TYPE_CHECKING:
    from .node import RedisBackplane

log = logging.getLogger("chatsrv.backplane")

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
SYNC_TIMEOUT_S = 10.0

Handler = Callable[[str, dict], None]  # (sending node, message)


class Listener:
    def __init__(self, backplane: RedisBackplane) -> None:
        self.bp = backplane
        self.hub = backplane.hub
        # Control messages from other nodes, by type.
        self._others: dict[str, Handler] = {
            "join": self._join,
            "leave": self._leave,
            "login": self._login,
            "logout": self._logout,
            "group": self._group,
            "delgroup": self._group_deleted,
            "state": self._state,
            "hello": self._hello,
            "gone": self._gone,
            "announce": self._announce,
            "account": self._account,
            "loginfail": self._login_failed,
            "roles": self._roles,
            "removed": self._removed,
        }
        # This node's own control messages coming back, by type (the rest: nothing to do).
        self._own: dict[str, Handler] = {
            "join": self._own_join,
            "login": self._own_login,
            "gone": self._own_gone,
            "roles": self._own_roles,
        }

    def run(self, ready: Event) -> None:
        bp = self.bp
        backoff = BACKOFF_MIN_S
        while not bp.stopping:
            try:
                self._connect()
                ready.set()
                backoff = BACKOFF_MIN_S
                self._consume()
            except (*conn.ERRORS, ClusterUnavailable) as err:
                bp.failed(err)
            except Exception:
                log.exception("backplane listener error")
                bp.failed(RuntimeError("listener error"))
            self._close_pubsub()
            if bp.stopping:
                return
            gevent.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _connect(self) -> None:
        bp = self.bp
        bp.reconnect = False
        pubsub = bp.redis.pubsub()
        wanted = [g.key for g in self.hub.groups.values() if g.members]
        pubsub.subscribe(keys.CTL, keys.node_channel(bp.node),
                         *(keys.group_channel(k) for k in wanted))
        bp.pubsub = pubsub
        bp.subscribed = set(wanted)
        done = AsyncResult()
        bp.post(E.Sync(done))  # in order with the publisher's stream
        bp.wake()
        done.get(timeout=SYNC_TIMEOUT_S)
        # Subscribed: what changes from now on is announced to this node, and the
        # announcements wait on the socket until this is done. Read after that,
        # Redis's roles hold every change made before (those missed while away).
        bp.reload_roles()

    def _consume(self) -> None:
        bp = self.bp
        pubsub = bp.pubsub
        assert pubsub is not None  # set by _connect, just before
        while not bp.stopping and not bp.reconnect:
            message = pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            kind = message["type"]
            if kind == "message":
                self._on_message(message["channel"], message["data"])
            elif kind == "subscribe":
                waiter = bp.sub_waiters.get(message["channel"])
                if waiter is not None:
                    waiter.set()

    def _close_pubsub(self) -> None:
        bp = self.bp
        pubsub, bp.pubsub = bp.pubsub, None
        if pubsub is not None:
            try:
                pubsub.reset()
            except Exception:  # a dead connection: nothing to tell Redis
                pass

    def _on_message(self, channel: bytes, data: bytes) -> None:
        bp = self.bp
        bp.stats.received += 1
        hub = self.hub
        if channel.startswith(keys.GROUP_CHANNEL_PREFIX):
            node, _, rest = data.partition(b"\0")
            if node != bp.node_b:
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
        bp.schedule_flush()

    def _on_direct(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "kick":
            reason = "replaced" if message.get("reason") == "replaced" else "kicked"
            self.bp.kick_local(message["name"], reason)
        elif kind == "remove":
            self.hub.remove_request(message["group"], message["user"], message["actor"],
                                    message.get("reason"))

    def _on_control(self, message: dict) -> None:
        # Every node's control messages name it; a store's `group` message does not,
        # and its handler ignores the node ("" never equals this node's id).
        node = message.get("node", "")
        table = self._own if node == self.bp.node else self._others
        handler = table.get(message.get("type", ""))
        if handler is not None:
            handler(node, message)

    # ------------------------------------------------------------ this node's own events

    def _own_join(self, node: str, m: dict) -> None:
        self.hub.join_confirmed(m["user"], m["group"])

    def _own_login(self, node: str, m: dict) -> None:
        claim = self.bp.claims.get(m.get("token", ""))  # tokens are never ""
        if claim is not None:
            claim.echoed = True
            claim.settle()

    def _own_roles(self, node: str, m: dict) -> None:
        self._roles(node, m)
        echo = self.bp.roles_echoes.get(m.get("token", ""))
        if echo is not None:
            echo.set()

    def _own_gone(self, node: str, m: dict) -> None:
        bp = self.bp
        if bp.own_gone:  # one this node published itself (start-up, stop)
            bp.own_gone -= 1
        elif not bp.stopping:
            log.warning("this node was reaped (heartbeats missed); registering again")
            bp.post(E.Sync(None))
            bp.wake()

    # ------------------------------------------------------------ other nodes' events

    def _join(self, node: str, m: dict) -> None:
        self.hub.remote_join(m["user"], m["group"], node)

    def _leave(self, node: str, m: dict) -> None:
        self.hub.remote_leave(m["user"], m["group"], node)

    def _login(self, node: str, m: dict) -> None:
        hub = self.hub
        hub.remote_login(node, m["name"], m["since"], m.get("peer", ""))
        if m.get("group"):
            hub.remote_join(P.name_key(m["name"]), m["group"], node)

    def _logout(self, node: str, m: dict) -> None:
        self.hub.remote_logout(m["user"], node)

    def _group(self, node: str, m: dict) -> None:
        self.hub.remote_group(m["name"], m.get("by", ""), m.get("at", 0.0), m.get("owner"))

    def _group_deleted(self, node: str, m: dict) -> None:
        self.hub.remote_group_deleted(m["group"])

    def _state(self, node: str, m: dict) -> None:
        self.hub.node_state(node, m["users"])
        self.bp.publisher.heard(node)

    def _hello(self, node: str, m: dict) -> None:
        self.bp.post(E.State())
        self.bp.wake()

    def _gone(self, node: str, m: dict) -> None:
        names = self.hub.node_gone(node)
        if names:
            log.info("node %s left the cluster: %d users gone", node, len(names))

    def _announce(self, node: str, m: dict) -> None:
        group = m.get("group")
        if group is None or P.name_key(P.normalize(group)) in self.hub.groups:
            self.hub.announce(m["text"], group)

    def _account(self, node: str, m: dict) -> None:
        gevent.spawn(self.bp.fetch_account, m["key"])

    def _roles(self, node: str, m: dict) -> None:
        self.hub.remote_roles(m["group"], int(m["v"]), m["field"], m.get("value"), m["actor"],
                              m.get("target"), m.get("notice"), m.get("reason"))

    def _removed(self, node: str, m: dict) -> None:
        if m.get("was"):
            self.hub.remote_removed(m["user"], m["group"], node, m["actor"])
        else:  # asked to remove a member it no longer had: this mirror was behind
            self.hub.remote_leave(m["user"], m["group"], node, False)

    def _login_failed(self, node: str, m: dict) -> None:
        accounts = self.bp.accounts
        if accounts is not None:
            accounts.login_failed_elsewhere(m["key"], float(m["at"]))

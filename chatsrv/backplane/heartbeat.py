"""The heartbeat: this node's liveness in Redis, and the reaping of nodes that lost theirs.

Every --node-ttl/6 it refreshes `chatsrv:node:<id>` (TTL 2/3 of --node-ttl)
and checks the heartbeats of the other nodes in `chatsrv:nodes`. A node whose
key expired is reaped by a Lua script that exactly one surviving node wins:
its names are freed and every node drops its users, with leave notices,
within --node-ttl of its death. Finding this node missing from the set (it
was reaped during a long pause) has the publisher register it again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import gevent

from ..core import events as E
from . import conn, keys

if TYPE_CHECKING:
    from .node import RedisBackplane

log = logging.getLogger("chatsrv.backplane")


class Heartbeat:
    def __init__(self, backplane: RedisBackplane) -> None:
        self.bp = backplane

    def run(self) -> None:
        bp = self.bp
        while not bp.stopping:
            gevent.sleep(bp.ttl / 6)
            if bp.hub.unavailable or bp.stopping:
                continue
            try:
                self._beat()
            except conn.ERRORS as err:
                bp.failed(err)
            except Exception:
                log.exception("backplane heartbeat error")

    def _beat(self) -> None:
        bp = self.bp
        redis = bp.redis
        pipe = redis.pipeline(transaction=False)
        pipe.set(keys.heartbeat(bp.node), b"1", px=bp.heartbeat_ms())
        pipe.sadd(keys.NODES, bp.node)
        pipe.smembers(keys.NODES)
        _, added, nodes = pipe.execute()
        if added:
            log.warning("this node was missing from the cluster; registering again")
            bp.post(E.Sync(None))
            bp.wake()
        others = [n.decode() for n in nodes if n.decode() != bp.node]
        if not others:
            return
        pipe = redis.pipeline(transaction=False)
        for other in others:
            pipe.exists(keys.heartbeat(other))
        for other, alive in zip(others, pipe.execute(), strict=True):
            if not alive:
                self.reap(other)

    def reap(self, dead: str) -> None:
        """Free the names of a node whose heartbeat expired (or this one, leaving)."""
        bp = self.bp
        if dead == bp.node:
            bp.own_gone += 1
        freed = bp.redis.eval(keys.REAP, 4, keys.heartbeat(dead), keys.NODES,
                              keys.node_users(dead), keys.USERS, dead, keys.CTL,
                              keys.dumps({"type": "gone", "node": dead}))
        if freed >= 0 and dead != bp.node:
            bp.stats.reaped += 1
            log.warning("node %s stopped heartbeating: reaped, %d names freed", dead, freed)

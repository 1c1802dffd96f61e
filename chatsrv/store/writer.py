"""The gevent side of the store: one writer thread, the history flusher, create commits.

Everything that touches the disk runs on a dedicated gevent `ThreadPool` of
one thread, in submission order, so group creations and history batches
reach the database in the order the hub made them. Greenlets that need a
result wait on it without blocking the event loop:

- the flusher greenlet, every `--flush-ms`, takes the hub's unsaved history
  (`Hub.take_unsaved`) and waits for the writer to commit it; a failed batch is
  put back (`Hub.unsaved_again`) and retried at the next flush;
- the session that sent `create` waits for its group's commit (`settle`);
  the hub is updated and the reply queued in a link callback, so they happen
  even if that session is killed while waiting. A session whose command named
  a group still being committed waits for that commit, then runs the command
  again.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event
from gevent.threadpool import ThreadPool

from .. import protocol as P
from ..hub import ClusterUnavailable, GroupTaken
from .base import GroupRecord, Store

if TYPE_CHECKING:
    from ..hub import Group, Hub, User

log = logging.getLogger("chatsrv.store")

FAILURE_LOG_EVERY_S = 60.0


class WriterStats:
    """Plain counters for logs and metrics."""

    __slots__ = ("flushes", "messages", "failures", "last_flush_s", "max_flush_s", "creates")

    def __init__(self) -> None:
        self.flushes = 0
        self.messages = 0
        self.failures = 0
        self.creates = 0
        self.last_flush_s = 0.0
        self.max_flush_s = 0.0


class StoreWriter:
    def __init__(self, store: Store, hub: Hub, *, flush_ms: int, keep: int,
                 on_reply=None) -> None:
        self.store = store
        self.hub = hub
        self.interval = flush_ms / 1000.0
        self.keep = keep
        self.on_reply = on_reply or (lambda: None)  # schedules the transport's flush
        self.stats = WriterStats()
        self.pool = ThreadPool(1) if store.durable else None
        self._wake = Event()
        self._closing = False
        self._flusher = None
        self._commits: dict[str, Event] = {}  # group key -> set once its commit is decided
        self._failing_since: float | None = None
        # Cluster mode: `history` reads Redis through the backplane, in order with
        # this node's published messages (see backplane/node.py).
        self.read_history = None
        self.follow = None
        self._failure_logged = 0.0

    def start(self) -> None:
        if self.pool is not None and self.hub.journal is not None:
            self._flusher = gevent.spawn(self._run)

    # ------------------------------------------------------------ history

    def _run(self) -> None:
        while not self._closing:
            started = time.monotonic()
            self.flush()
            self._wake.wait(max(0.0, self.interval - (time.monotonic() - started)))
        self.flush()

    def flush(self) -> None:
        """Hand the unsaved history to the writer thread and wait for its commit."""
        batch = self.hub.take_unsaved()
        if not batch:
            return
        records = [(group.name, entries) for group, entries in batch]
        started = time.monotonic()
        try:
            self.pool.apply(self.store.append_history, (records, self.keep))
        except Exception as err:  # disk full, I/O error: keep the entries, try again
            self.hub.unsaved_again(batch)
            self._failed(err, sum(len(e) for _, e in records))
            return
        spent = time.monotonic() - started
        stats = self.stats
        stats.flushes += 1
        stats.messages += sum(len(entries) for _, entries in records)
        stats.last_flush_s = spent
        stats.max_flush_s = max(stats.max_flush_s, spent)
        if self._failing_since is not None:
            log.warning("history writes recovered after %.1f s", started - self._failing_since)
            self._failing_since = None

    def _failed(self, err: Exception, pending: int) -> None:
        self.stats.failures += 1
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failure_logged >= FAILURE_LOG_EVERY_S:
            self._failure_logged = now
            log.error("history write failed (%d messages pending, retrying every flush): %s",
                      pending, err)

    # ------------------------------------------------------------ groups

    def delete_group(self, group: Group) -> None:
        """Forget a group in the store; the calling greenlet waits for the commit,
        after every history batch submitted before (one thread, in order)."""
        if self.pool is None:
            self.store.delete_group(group.name)
            return
        self.pool.apply(self.store.delete_group, (group.name,))

    def take_pending(self) -> tuple[list, list, list]:
        """The creates, blocked commands and (cluster mode) history reads the last
        command left; the caller settles them.

        Taken synchronously, right after the command that made them, so each
        session settles its own and its replies keep their order."""
        hub = self.hub
        created, hub.uncommitted = hub.uncommitted, []
        blocked, hub.blocked = hub.blocked, []
        queries, hub.queries = hub.queries, []
        return created, blocked, queries

    def settle(self, pending: tuple[list, list, list] | None = None) -> None:
        """Commit the groups `create` reserved, then run again the commands that
        named a group awaiting its commit, then answer the history reads.
        The calling greenlet waits; the loop does not."""
        hub = self.hub
        created, blocked, queries = pending if pending is not None else self.take_pending()
        while created or blocked or queries:
            for creator, group in created:
                self._commit(creator, group).wait()
            for user, group, line in blocked:
                done = self._commits.get(group.key)
                if done is not None:
                    done.wait()
                if hub.users.get(user.key) is user:
                    hub.handle(user, line)  # may block again, on a newer reservation
            for kind, user, group, arg in queries:
                if kind == "history":
                    self._answer_history(user, group, arg)
                else:
                    self._answer_join(user, group)
            created, blocked, queries = self.take_pending()

    def _answer_join(self, user: User, group: Group) -> None:
        """Cluster mode: `ok: joined group` once this node follows the group's channel."""
        self.follow(group)
        if self.hub.users.get(user.key) is user:
            self.hub.reply(user, f"ok: joined group {group.name}")
        self.on_reply()

    def _answer_history(self, user: User, group: Group, count: int) -> None:
        """Cluster mode: `history` reads the group's list in Redis (`read_history`)."""
        try:
            entries = self.read_history(group, count)
        except Exception as err:
            log.warning("history of %s not read: %s", group.name, err)
            lines = [P.CLUSTER_UNAVAILABLE]
        else:
            lines = [P.history_line(group.name, at, sender, text) for at, sender, text in entries]
            lines.append(f"ok: end of history {group.name}")
        if self.hub.users.get(user.key) is user:
            for line in lines:
                self.hub.reply(user, line)
        self.on_reply()

    def _commit(self, creator: User | None, group: Group) -> Event:
        done = Event()
        self._commits[group.key] = done
        record = GroupRecord(group.name, group.created_by, group.created_at)
        job = self.pool.spawn(self.store.create_group, record)

        def finish(job) -> None:
            err = job.exception
            if job.successful():
                self.stats.creates += 1
                self.hub.group_committed(group, creator)
            elif isinstance(err, GroupTaken):  # another node of the cluster was first
                record = err.args[0]
                self.hub.remote_group(record.name, record.created_by, record.created_at)
                self.hub.group_not_committed(
                    group, creator, f"error: group already exists: {record.name}")
            elif isinstance(err, ClusterUnavailable):
                log.warning("group %s not created: %s", group.name, err)
                self.hub.group_not_committed(group, creator, P.CLUSTER_UNAVAILABLE)
            else:
                log.error("group %s not created: the store failed: %s", group.name, err)
                self.hub.group_not_committed(group, creator)
            del self._commits[group.key]
            self.on_reply()
            done.set()

        job.rawlink(finish)
        return done

    # ------------------------------------------------------------ end

    def close(self) -> None:
        """Write what is left, close the store, stop the thread. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._flusher is not None:
            self._wake.set()
            self._flusher.join()
        if self.pool is None:
            self.store.close()
            return
        try:
            self.pool.apply(self.store.close)
        finally:
            self.pool.kill()

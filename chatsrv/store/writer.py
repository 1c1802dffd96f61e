"""The gevent side of the store: one writer thread, the history flusher, create commits.

Everything that touches the disk runs on a dedicated gevent `ThreadPool` of
one thread, in submission order, so group creations and history batches
reach the database in the order the hub made them. Greenlets that need a
result wait on it without blocking the event loop:

- the flusher greenlet, every `--flush-ms`, takes the hub's unsaved history
  (`Hub.take_unsaved`) and waits for the writer to commit it; a failed batch is
  put back (`Hub.unsaved_again`) and retried at the next flush;
- the session that sent `create` waits for its group's commit (`settle`);
  the outcome goes back to the hub as a typed result (`Committed`,
  `StorageFailed`, `Taken`, `Unavailable`: core/commits.py) in a link
  callback, so the hub is updated and the reply queued even if that session is
  killed while waiting. A session whose command named a group still being
  committed waits for that commit, then the hub runs the command again
  (`Commits.retry`). This module words no reply: the core does;
- `history` beyond what memory holds (`--history-memory`) is read by the same
  thread (`read_older`), so it sees exactly the batches handed over before it.

A disk that stops answering must not stop the server (PROTOCOL.md, "Limits"):
a create not committed within `CREATE_TIMEOUT_S` is answered as failed, and
undone by the thread if it lands later (`_Fate`); a history read gives up
after `READ_TIMEOUT_S`; `stalled()` (readiness, a metric, log lines) says when
an operation has run for more than `STALL_AFTER_S` or writes keep failing that
long; `close` is bounded and logs what could not be written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import gevent
from gevent.event import Event
from gevent.threadpool import ThreadPool

from ..core.commits import (
    Committed,
    Followed,
    HistoryQuery,
    HistoryRead,
    JoinQuery,
    Pending,
    StorageFailed,
    StoredQuery,
    Taken,
    Unavailable,
)
from ..core.errors import ClusterUnavailable, GroupTaken
from .base import Entry, GroupRecord, Store

if TYPE_CHECKING:
    from ..core.commits import Commits
    from ..core.model import Group, User


class WriterHub(Protocol):
    """What the writer uses of the hub (`core.hub.Hub` implements it), named once:
    the journal of unsaved history it drains and puts back, and the commits
    bookkeeping it settles with typed results (core/commits.py)."""

    @property
    def journal(self) -> list[Group] | None: ...
    @property
    def commits(self) -> Commits: ...

    def take_unsaved(self) -> list[tuple[Group, list[Entry]]]: ...
    def history_saved(self, batch: list[tuple[Group, list[Entry]]]) -> None: ...
    def unsaved_again(self, batch: list[tuple[Group, list[Entry]]]) -> None: ...
    def unsaved_count(self) -> int: ...

log = logging.getLogger("chatsrv.store")

FAILURE_LOG_EVERY_S = 60.0
CREATE_TIMEOUT_S = 10.0  # PROTOCOL.md: then `error: group not created, storage failed`
READ_TIMEOUT_S = 10.0  # a `history` read from the store; then memory's part only
STALL_AFTER_S = 5.0  # an operation running (or writes failing) this long: not ready
WATCH_EVERY_S = 1.0


class _Failed:
    """What a writer-thread job that raised returns instead of raising: an
    exception leaving a gevent ThreadPool job is also printed by the hub, as a
    multi-line traceback on stderr outside the log format, once per failed
    flush (disk full: thousands of lines). The caller re-raises it (`_result`)
    and logs it through `log`, rate-limited."""

    __slots__ = ("err",)

    def __init__(self, err: Exception) -> None:
        self.err = err


def _result(value: Any) -> Any:
    if isinstance(value, _Failed):
        raise value.err
    return value


class _Abandoned(Exception):
    """The thread undid a commit that came after its creator was told it failed."""


class _Fate:
    """Who decides a create first: the thread (committed in time) or the loop's
    timer (too late: abandoned). A real lock, as the thread is a real thread."""

    __slots__ = ("lock", "state")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state: str | None = None

    def decide(self, state: str) -> bool:
        with self.lock:
            if self.state is None:
                self.state = state
                return True
            return False


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
    def __init__(self, store: Store, hub: WriterHub, *, flush_ms: int, keep: int,
                 on_reply=None) -> None:
        self.store = store
        self.hub = hub
        self.interval = flush_ms / 1000.0
        self.keep = keep
        self.on_reply = on_reply or (lambda: None)  # schedules the transport's flush
        self.stats = WriterStats()
        # gevent is untyped: its objects are Any here.
        self.pool: Any | None = ThreadPool(1) if store.durable else None
        self._wake = Event()
        self._closing = False
        self._flusher: Any | None = None
        self._commits: dict[str, Event] = {}  # group key -> set once its commit is decided
        self._failing_since: float | None = None
        # Cluster mode: `history` reads Redis through the backplane, in order with
        # this node's published messages (see backplane/node.py).
        self.read_history: Callable[[Group, int], list[Entry]] | None = None
        self.follow: Callable[[Group], None] | None = None
        self._failure_logged = 0.0
        # Writer thread only: group key -> `Group.seq` just after its last
        # committed entry, so `read_older` knows how many of the newest stored
        # entries memory also holds. Loaded groups start at their `seq`.
        self.ends: dict[str, int] = {}
        # Set by the thread while it runs an operation (a float is atomic to read).
        self._busy_since: float | None = None
        self._stall_logged: float | None = None
        self._watch: Any | None = None

    def start(self) -> None:
        if self.pool is not None and self.hub.journal is not None:
            self._flusher = gevent.spawn(self._run)
        if self.pool is not None:
            watch = self._watch = gevent.get_hub().loop.timer(WATCH_EVERY_S, WATCH_EVERY_S)
            watch.start(self._check_stall)

    def _job(self, fn, *args):
        """Run in the writer thread, timed for `stalled`."""
        self._busy_since = time.monotonic()
        try:
            return fn(*args)
        except Exception as err:
            return _Failed(err)
        finally:
            self._busy_since = None

    def stalled(self) -> float:
        """Seconds the store has been stuck (an operation running, or history writes
        failing, for more than STALL_AFTER_S); 0.0 when it is not. Whoever asks
        first (readiness, a scrape, the 1 s watch, a flush) logs the change, so the
        log agrees with what /readyz said."""
        now = time.monotonic()
        since = min((t for t in (self._busy_since, self._failing_since) if t is not None),
                    default=None)
        stuck = 0.0 if since is None or now - since <= STALL_AFTER_S else now - since
        if stuck and self._stall_logged is None:
            self._stall_logged = since
            log.error("store stalled: no answer from %s for %.0f s (%d history messages "
                      "unsaved); /readyz answers 503 until it recovers", self.store.describe(),
                      stuck, self.hub.unsaved_count())
        elif not stuck and self._stall_logged is not None:
            log.warning("store recovered after %.1f s", now - self._stall_logged)
            self._stall_logged = None
        return stuck

    def _check_stall(self) -> None:
        """Every WATCH_EVERY_S and after each history write: log a change even when
        nobody asks (see `stalled`)."""
        self.stalled()

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
        ends = [(group.key, group.seq) for group, _ in batch]
        started = time.monotonic()
        try:
            # Inside the try, as the failure it stands for was: a journal (unsaved
            # history) exists only with a durable store, which has the pool.
            assert self.pool is not None
            _result(self.pool.apply(self._job, (self._append, records, ends)))
        except Exception as err:  # disk full, I/O error: keep the entries, try again
            self.hub.unsaved_again(batch)
            self._failed(err, sum(len(e) for _, e in records), started)
            self._check_stall()
            return
        self.hub.history_saved(batch)
        spent = time.monotonic() - started
        stats = self.stats
        stats.flushes += 1
        stats.messages += sum(len(entries) for _, entries in records)
        stats.last_flush_s = spent
        stats.max_flush_s = max(stats.max_flush_s, spent)
        if self._failing_since is not None:
            log.warning("history writes recovered after %.1f s", started - self._failing_since)
            self._failing_since = None
        self._check_stall()

    def _append(self, records: list, ends: list[tuple[str, int]]) -> None:
        """Writer thread: commit a history batch, then note where each group ends."""
        self.store.append_history(records, self.keep)
        self.ends.update(ends)

    def _failed(self, err: Exception, pending: int, started: float) -> None:
        self.stats.failures += 1
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = started
        if now - self._failure_logged >= FAILURE_LOG_EVERY_S:
            self._failure_logged = now
            log.error("history write failed (%d messages pending, retrying every flush): %s",
                      pending, err)

    # ------------------------------------------------------------ accounts and other calls

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the writer thread, after everything submitted before;
        the calling greenlet waits (nobody else does). Exceptions are re-raised here."""
        if self.pool is None:
            return fn(*args)
        return _result(self.pool.apply(self._job, (fn, *args)))

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the writer thread without waiting; a failure is logged."""
        if self.pool is None:
            fn(*args)
            return
        job = self.pool.spawn(self._job, fn, *args)
        job.rawlink(self._log_failure)

    @staticmethod
    def _log_failure(job: Any) -> None:
        exc = job.value.err if isinstance(job.value, _Failed) else job.exception
        if exc is not None:
            log.error("store: background write failed: %s", exc)

    # ------------------------------------------------------------ groups

    def delete_group(self, group: Group) -> None:
        """Forget a group in the store; the calling greenlet waits for the commit,
        after every history batch submitted before (one thread, in order)."""
        if self.pool is None:
            self.store.delete_group(group.name)
            return
        _result(self.pool.apply(self._job, (self.store.delete_group, group.name)))

    def settle(self, pending: Pending | None = None) -> None:
        """Commit the groups `create` reserved, then have the hub run again the
        commands that named a group awaiting its commit, then answer the reads.
        `pending` is what the command left (`hub.commits.take()`, taken by the
        caller right after it). The calling greenlet waits; the loop does not.

        Every outcome goes back to the hub as a typed result (core/commits.py),
        which decides the group's fate and words the replies."""
        commits = self.hub.commits
        created, blocked, queries = pending if pending is not None else commits.take()
        while created or blocked or queries:
            for creator, group in created:
                self._commit(creator, group).wait()
            for user, group, line in blocked:
                done = self._commits.get(group.key)
                if done is not None:
                    done.wait()
                commits.retry(user, line)  # may block again, on a newer reservation
            for query in queries:
                if isinstance(query, HistoryQuery):
                    self._answer_history(query)
                elif isinstance(query, StoredQuery):
                    self._answer_stored(query)
                else:
                    self._answer_join(query)
            created, blocked, queries = commits.take()

    def _answer_join(self, query: JoinQuery) -> None:
        """Cluster mode: `ok: joined group` once this node follows the group's channel."""
        assert self.follow is not None  # set by the server in cluster mode
        self.follow(query.group)
        self.hub.commits.settled(Followed(query.user, query.group))
        self.on_reply()

    def _answer_history(self, query: HistoryQuery) -> None:
        """Cluster mode: `history` reads the group's list in Redis (`read_history`)."""
        group = query.group
        entries: list[Entry] | None
        try:
            assert self.read_history is not None  # set by the server in cluster mode
            entries = self.read_history(group, query.count)
        except Exception as err:
            log.warning("history of %s not read: %s", group.name, err)
            entries = None
        self.hub.commits.settled(HistoryRead(query.user, group, entries))
        self.on_reply()

    def _answer_stored(self, query: StoredQuery) -> None:
        """`history` beyond memory: the `count` entries before number `before` from
        the store (the writer thread, after every batch handed over before this
        command), then `kept`, the ring as it was when the command ran."""
        group = query.group
        try:
            assert self.pool is not None  # only a durable store has older entries
            older = _result(self.pool.spawn(self._job, self._read_older, group.name, group.key,
                                            query.before, query.count).get(timeout=READ_TIMEOUT_S))
        except (Exception, gevent.Timeout) as err:
            log.warning("history of %s: older messages not read from the store, answering "
                        "with the %d in memory: %s", group.name, len(query.kept),
                        err or "timed out")
            older = []
        self.hub.commits.settled(HistoryRead(query.user, group, [*older, *query.kept]))
        self.on_reply()

    def _read_older(self, name: str, key: str, before: int, count: int) -> list:
        """Writer thread: the stored entries numbered before-count .. before-1."""
        skip = max(0, self.ends.get(key, 0) - before)
        return self.store.read_older(name, skip, count)

    def _create(self, record: GroupRecord, fate: _Fate) -> None:
        """Writer thread: commit a group, or undo it if its creator gave up meanwhile."""
        self.store.create_group(record)
        if not fate.decide("committed"):
            undone = self.store.delete_group(record.name)
            log.warning("group %s committed %.0f s late, after its creator was told it "
                        "failed: %s", record.name, time.time() - record.created_at,
                        "deleted again" if undone else "it exists (this store cannot undo)")
            raise _Abandoned(record.name)

    def _commit(self, creator: User | None, group: Group) -> Event:
        done = Event()
        self._commits[group.key] = done
        record = GroupRecord(group.name, group.created_by, group.created_at, group.owner)
        fate = _Fate()
        assert self.pool is not None  # a create waits for its commit with a durable store only
        job = self.pool.spawn(self._job, self._create, record, fate)
        timer = gevent.get_hub().loop.timer(CREATE_TIMEOUT_S)

        def give_up() -> None:
            timer.close()
            if not fate.decide("abandoned"):
                return  # committed just now: `finish` is on its way
            log.error("group %s not created: the store did not answer within %.0f s",
                      group.name, CREATE_TIMEOUT_S)
            self.hub.commits.settled(StorageFailed(group, creator))
            self._decided(group, done)

        def finish(job) -> None:
            timer.close()
            if fate.state == "abandoned":
                return  # answered by `give_up`; the thread undid a late commit
            err = job.value.err if isinstance(job.value, _Failed) else job.exception
            settled = self.hub.commits.settled
            if err is None:
                self.stats.creates += 1
                settled(Committed(group, creator))
            elif isinstance(err, GroupTaken):  # another node of the cluster was first
                record = err.args[0]
                settled(Taken(group, creator, record.name, record.created_by,
                              record.created_at))
            elif isinstance(err, ClusterUnavailable):
                log.warning("group %s not created: %s", group.name, err)
                settled(Unavailable(group, creator))
            else:
                log.error("group %s not created: the store failed: %s", group.name, err)
                settled(StorageFailed(group, creator))
            self._decided(group, done)

        timer.start(give_up)
        job.rawlink(finish)
        return done

    def _decided(self, group: Group, done: Event) -> None:
        if self._commits.get(group.key) is done:
            del self._commits[group.key]
        self.on_reply()
        done.set()

    # ------------------------------------------------------------ end

    def close(self, timeout: float | None = None) -> None:
        """Write what is left, close the store, stop the thread. Idempotent.

        With a `timeout` it returns within about that many seconds whatever the
        disk does: history it could not write is logged as lost, with a count,
        and a thread stuck in the disk is left behind (the process exits)."""
        if self._closing:
            return
        self._closing = True
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._watch is not None:
            self._watch.close()
        if self._flusher is not None:
            self._wake.set()
            self._flusher.join(timeout=_left(deadline))
            if not self._flusher.dead:
                lost = self.hub.unsaved_count()
                self._flusher.kill(block=False)
                log.error("store did not answer within %.1f s at shutdown: %d history "
                          "messages lost", timeout, lost)
                return
            lost = self.hub.unsaved_count()
            if lost:
                log.error("the last history write failed at shutdown: %d history messages "
                          "lost", lost)
        if self.pool is None:
            self.store.close()
            return
        try:
            _result(self.pool.spawn(self._job, self.store.close).get(timeout=_left(deadline)))
        except gevent.Timeout:
            log.error("store did not close within %.1f s at shutdown (history was written; "
                      "the next start recovers the database)", timeout)
            return  # killing the pool would wait for its stuck thread
        self.pool.kill()


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())

"""Durable groups and history: the store interface, its two kinds, and how the server uses it.

Kinds (`--store`):
- `sqlite` (default): `<data-dir>/chatsrv.db`, see `sqlite.py`;
- `memory`: nothing kept, see `memory.py`.

What is kept: groups (display name, creator, creation time) and each group's
last `--history` public messages (sender, UTC time, text). Users and
memberships are session state and are not kept.

Design: the hub stays pure (no I/O, no threads). It *records* what must be
persisted and the gevent layer hands that to the store, as it does with
`Hub.dirty` for output:

1. History. `public` appends to the group's in-memory ring (served by the
   `history` command) and counts the entry in `Group.unsaved`; the first
   unsaved entry also puts the group on `Hub.journal`. That is the whole cost
   on the event loop per message: one integer add, no lock, no allocation, no
   thread hand-off. Every `--flush-ms` (default 50 ms) the flusher greenlet of
   `StoreWriter` takes the newest `unsaved` entries of each journaled group
   and waits (only itself) while the single writer thread of a gevent
   `ThreadPool` packs them and commits them in one transaction (WAL mode,
   `synchronous=NORMAL`). The event loop never waits on disk for a public
   message. A crash (even `kill -9`) therefore loses at most the messages
   accepted during the last flush interval plus the commit in progress; a
   clean stop (SIGTERM/SIGINT) writes everything. If a write fails (disk
   full), its entries are marked unsaved again and retried at the next flush;
   what is pending never exceeds the in-memory rings, so memory stays bounded.
   The rings of all groups together are bounded by `--history-memory` (see
   `core/hub.py`): entries the store has committed may leave memory, and `history`
   reads them back through the writer thread (`Store.read_older`).

2. Groups. `create` reserves the name in the hub (`Hub.commits.reserved`:
   not visible yet; see core/commits.py) and lists it in
   `Hub.commits.uncommitted` instead of replying. Right after the hub call the
   session greenlet takes them (`Commits.take`) and calls
   `StoreWriter.settle`, which submits the INSERT to the same writer thread
   (`synchronous=FULL` for it) and waits on an event. When the commit
   completes, a link callback on the event loop reports a typed result
   (`Committed`, `StorageFailed`, ...) to `Commits.settled`, which moves the
   group into `Hub.groups` and queues `ok: created group` (or
   `error: group not created, storage failed: ...`), then wakes the session. Only the creating session waits (its next commands are read after
   the reply, so its replies stay in order); everyone else carries on. A
   command of another session that names the reserved group (a second
   `create` of it, a `join`) is parked in `Hub.commits.blocked`; that session waits
   for the same commit and then the hub runs the command again, so "already exists"
   is only ever said of a group that `join` finds. As the writer thread runs
   jobs in order, a group is committed before any history batch that
   mentions it. A commit that takes more than 10 s is answered as failed and,
   if it lands later, deleted again (`Store.delete_group`; see writer.py).

3. Start-up. `open_store` takes an exclusive `flock` on
   `<data-dir>/chatsrv.lock` (a second server on the directory exits with a
   clear message), opens the database, applies forward migrations
   (`schema_version` table), and `load` returns every group with its last
   `--history` messages. Every failure is a `StoreError` whose text is one
   line for the operator; the CLI prints it and exits 1.

4. Backup and restore (`chatsrv backup PATH`, `chatsrv restore PATH`): the
   SQLite online backup API, safe while the server runs; restore takes the
   directory lock, so it refuses while a server runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Entry, GroupRecord, LoadedGroup, Store, StoreError
from .memory import MemoryStore

if TYPE_CHECKING:
    from ..config import Config

KINDS = ("sqlite", "memory")

__all__ = [
    "KINDS", "Entry", "GroupRecord", "LoadedGroup", "MemoryStore", "Store", "StoreError",
    "open_store",
]


def open_store(config: Config) -> Store:
    """The store `--store` names, opened (and locked) on `--data-dir`; raises StoreError."""
    if config.store == "memory":
        return MemoryStore()
    from .sqlite import SqliteStore

    return SqliteStore(config.data_dir)

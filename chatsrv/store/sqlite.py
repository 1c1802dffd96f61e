"""`--store sqlite` (the default): `<data-dir>/chatsrv.db`, WAL mode, one writer.

Schema (version table + forward migrations, `MIGRATIONS`):
- `groups`: one row per group (display name, creator, creation time).
- `history_chunks`: history in chunks, one row per group per flush, holding
  that flush's messages packed in three columns (times as little-endian
  float64, senders and texts joined by LF, which a message can never hold).
  A row per message would cost 2-4 us of writer CPU per message on the
  benchmark's 80,000 messages/s, far more than the 10 % budget of the issue;
  a chunk costs well under 1 us per message and is read back just as easily.
  After each append, chunks wholly older than the group's last `--history`
  messages are deleted (in bulk, once the excess passes a slack, so a busy
  group is not rescanned on every flush).

Durability: history commits use `synchronous=NORMAL`, which in WAL mode
survives any crash of the process (the WAL is written before COMMIT returns)
and, on power loss, may lose only the last commits. Group creation commits
with `synchronous=FULL` (the WAL is fsynced) because its `ok` is a promise.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

from ..core.accounts import Account
from ..core.audit import AuditEntry
from ..core.protocol import GENERAL, name_key, normalize
from .base import Entry, GroupRecord, LoadedGroup, Store, StoreError
from .lock import DirLock

log = logging.getLogger("chatsrv.store")

DB_NAME = "chatsrv.db"

MIGRATIONS: tuple[str, ...] = (
    # 1: groups and packed history chunks.
    """
    CREATE TABLE groups (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_by TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE history_chunks (
        id INTEGER PRIMARY KEY,
        group_id INTEGER NOT NULL REFERENCES groups(id),
        count INTEGER NOT NULL,
        times BLOB NOT NULL,
        senders TEXT NOT NULL,
        texts TEXT NOT NULL
    );
    CREATE INDEX history_chunks_by_group ON history_chunks(group_id, id);
    """,
    # 2: accounts (argon2id PHC strings only, never a password) and server secrets
    # (the token HMAC key), so a backup carries both and a restore keeps tokens valid.
    """
    CREATE TABLE accounts (
        key TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        phc TEXT NOT NULL,
        created_at REAL NOT NULL,
        generation INTEGER NOT NULL DEFAULT 0,
        suspended INTEGER NOT NULL DEFAULT 0,
        last_login REAL
    );
    CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    """,
    # 3: group roles and moderation (owner, moderators, settings, invitations, bans,
    # mutes), one JSON document per group (core/moderation.py `snapshot`).
    """
    CREATE TABLE group_roles (
        group_id INTEGER PRIMARY KEY REFERENCES groups(id),
        data TEXT NOT NULL
    );
    """,
    # 4: the audit log (core/audit.py): moderation and administrators' account
    # changes, one row each, never pruned; `group_key` (the name key) for the filter.
    """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        group_name TEXT,
        group_key TEXT,
        target TEXT,
        detail TEXT
    );
    CREATE INDEX audit_by_group ON audit(group_key, id);
    """,
)
"""Forward migrations: entry i takes a database from version i to i + 1."""


def schema_version() -> int:
    return len(MIGRATIONS)


# ---------------------------------------------------------------- packing


def pack(entries: list[Entry]) -> tuple[int, bytes, str, str]:
    """(count, times, senders, texts) for one chunk row; C-speed joins, no per-entry Python."""
    ats, senders, texts = zip(*entries, strict=True)
    times = array("d", ats)
    if sys.byteorder == "big":
        times.byteswap()
    return len(entries), times.tobytes(), "\n".join(senders), "\n".join(texts)


def unpack(count: int, times: bytes, senders: str, texts: str) -> list[Entry]:
    ats = array("d")
    ats.frombytes(times)
    if sys.byteorder == "big":
        ats.byteswap()
    names, bodies = senders.split("\n"), texts.split("\n")
    if not len(ats) == len(names) == len(bodies) == count:
        raise sqlite3.DatabaseError("history chunk does not match its count")
    return list(zip(ats, names, bodies, strict=True))


# ---------------------------------------------------------------- connections


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, NORMAL sync."""
    if readonly:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                             isolation_level=None, check_same_thread=False)
    else:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout = 5000")
    if not readonly:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot switch to WAL mode (got {mode})")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
    return db


def read_version(db: sqlite3.Connection) -> int:
    """The schema version; 0 for an empty database; raises DatabaseError for a foreign one."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "schema_version" not in tables:
        if tables:
            raise sqlite3.DatabaseError("not a chatsrv database (no schema_version table)")
        return 0
    row = db.execute("SELECT version FROM schema_version").fetchone()
    if row is None:
        raise sqlite3.DatabaseError("schema_version table is empty")
    return int(row[0])


def migrate(db: sqlite3.Connection) -> int:
    """Bring the schema to the current version, one transaction per step; the old version."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = read_version(db)
        if version > schema_version():
            raise StoreError(
                f"database schema version {version} is newer than this chatsrv "
                f"understands ({schema_version()}); upgrade chatsrv"
            )
        if version == 0:
            db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            db.execute("INSERT INTO schema_version VALUES (0)")
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise
    start = version
    while version < schema_version():
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    db.execute(statement)
            version += 1
            db.execute("UPDATE schema_version SET version = ?", (version,))
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
    return start


def _rollback(db: sqlite3.Connection) -> None:
    """Undo the open transaction, if SQLite has not already: on SQLITE_FULL (and
    some I/O errors) it rolls back by itself, and a ROLLBACK then would raise
    "cannot rollback - no transaction is active" in place of the real error."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the error being raised is the one that matters


def describe_db_error(path: Path, err: sqlite3.Error) -> str:
    return (f"{path}: {err} (is it a corrupt or foreign file? "
            "restore a backup: `chatsrv restore PATH`, see docs/operations.md)")


# ---------------------------------------------------------------- the store


class SqliteStore(Store):
    kind = "sqlite"
    durable = True
    PRUNE_SLACK = 0.25  # prune a group once it holds this fraction more than `keep`

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir)
        self.path = self.dir / DB_NAME
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot use data directory {self.dir}: {err.strerror}") from None
        self.lock = DirLock(self.dir).acquire()
        self.ids: dict[str, int] = {}  # group display name -> row id
        self.stored: dict[int, int] = {}  # group id -> history entries in the database
        self.unknown: set[str] = set()  # groups whose history was refused (logged once)
        self.migrated_from = 0
        try:
            self.db = connect(self.path)
            self.migrated_from = migrate(self.db)
            self._check_writable()
        except StoreError:
            self.lock.release()
            raise
        except sqlite3.Error as err:
            self.lock.release()
            raise StoreError(describe_db_error(self.path, err)) from None

    def _check_writable(self) -> None:
        """A real write at start, so a read-only file fails now, not at the first message."""
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("UPDATE schema_version SET version = version")
        self.db.execute("COMMIT")

    def describe(self) -> str:
        return f"sqlite {self.path}"

    # ------------------------------------------------------------ start-up

    def load(self, keep: int, budget: int | None = None) -> list[LoadedGroup]:
        try:
            return self._load(keep, budget)
        except sqlite3.Error as err:
            raise StoreError(describe_db_error(self.path, err)) from None

    def _load(self, keep: int, budget: int | None) -> list[LoadedGroup]:
        db = self.db
        if db.execute("SELECT 1 FROM groups WHERE name = ?", (GENERAL,)).fetchone() is None:
            db.execute("INSERT INTO groups (name, created_by, created_at) VALUES (?, '', ?)",
                       (GENERAL, time.time()))
        self.stored = dict(db.execute(
            "SELECT group_id, SUM(count) FROM history_chunks GROUP BY group_id"))
        loaded = {}
        for gid, name, created_by, created_at in db.execute(
            "SELECT id, name, created_by, created_at FROM groups ORDER BY id"
        ).fetchall():
            self.ids[name] = gid
            loaded[gid] = LoadedGroup(GroupRecord(name, created_by, created_at),
                                      total=self.stored.get(gid, 0))
        if keep:
            for gid, entries in self._newest(keep, budget).items():
                loaded[gid].history = entries
        return list(loaded.values())

    def _newest(self, keep: int, budget: int | None) -> dict[int, list[Entry]]:
        """Each group's last `keep` entries, newest chunks of the whole store first,
        as long as they fit in `budget`: the memory budget holds at start too."""
        from ..core.model import entry_size

        left = float("inf") if budget is None else budget
        wanted = {gid: keep for gid in self.stored}
        chunks: dict[int, list[list[Entry]]] = {}
        for chunk_id, gid, _ in self.db.execute(
            "SELECT id, group_id, count FROM history_chunks ORDER BY id DESC"
        ).fetchall():
            want = wanted.get(gid, 0)
            if want <= 0:
                continue
            entries = self._chunk(chunk_id)[-want:]
            fit = 0
            for entry in reversed(entries):
                left -= entry_size(entry)
                if left < 0:
                    break
                fit += 1
            if fit:
                chunks.setdefault(gid, []).append(entries[len(entries) - fit:])
                wanted[gid] = want - fit
            if left < 0:
                break
        return {gid: [e for chunk in reversed(parts) for e in chunk]
                for gid, parts in chunks.items()}

    def _chunk(self, chunk_id: int) -> list[Entry]:
        row = self.db.execute(
            "SELECT count, times, senders, texts FROM history_chunks WHERE id = ?", (chunk_id,)
        ).fetchone()
        return unpack(*row)

    def read_older(self, name: str, skip: int, count: int) -> list[Entry]:
        """Writer thread: the `count` entries before the group's newest `skip`."""
        gid = self.ids.get(name)
        if gid is None or count <= 0:
            return []
        needed: list[int] = []
        seen = newer = 0
        for chunk_id, n in self.db.execute(
            "SELECT id, count FROM history_chunks WHERE group_id = ? ORDER BY id DESC", (gid,)
        ):
            if seen + n > skip:
                if not needed:
                    newer = seen  # entries of the newer chunks, all skipped
                needed.append(chunk_id)
            seen += n
            if seen >= skip + count:
                break
        entries = [entry for chunk_id in reversed(needed) for entry in self._chunk(chunk_id)]
        end = len(entries) - (skip - newer)
        return entries[max(0, end - count):max(0, end)]

    # ------------------------------------------------------------ writer thread

    def create_group(self, record: GroupRecord) -> None:
        db = self.db
        db.execute("PRAGMA synchronous = FULL")
        try:
            db.execute("BEGIN")
            try:
                cursor = db.execute(
                    "INSERT INTO groups (name, created_by, created_at) VALUES (?, ?, ?)",
                    (record.name, record.created_by, record.created_at),
                )
                if record.owner is not None:  # the rest of its roles: core/moderation.py
                    db.execute("INSERT INTO group_roles (group_id, data) VALUES (?, ?)",
                               (cursor.lastrowid, json.dumps({"owner": record.owner})))
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        finally:
            db.execute("PRAGMA synchronous = NORMAL")
        gid = cursor.lastrowid
        assert gid is not None  # the row the INSERT just added
        self.ids[record.name] = gid

    def delete_group(self, name: str) -> bool:
        """The group row and its history chunks in one transaction, fsynced like a
        create: the admin API's 204 is a promise."""
        db = self.db
        gid = self.ids.pop(name, None)
        if gid is None:
            row = db.execute("SELECT id FROM groups WHERE name = ?", (name,)).fetchone()
            if row is None:
                return False
            gid = row[0]
        db.execute("PRAGMA synchronous = FULL")
        try:
            db.execute("BEGIN")
            try:
                db.execute("DELETE FROM history_chunks WHERE group_id = ?", (gid,))
                db.execute("DELETE FROM group_roles WHERE group_id = ?", (gid,))
                db.execute("DELETE FROM groups WHERE id = ?", (gid,))
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                self.ids[name] = gid
                raise
        finally:
            db.execute("PRAGMA synchronous = NORMAL")
        self.stored.pop(gid, None)
        self.unknown.discard(name)
        return True

    def append_history(self, batch: list[tuple[str, list[Entry]]], keep: int) -> None:
        rows = []
        for name, entries in batch:
            gid = self.ids.get(name)
            if gid is None:  # a bug (a group made without create_group): keep the others
                if name not in self.unknown:
                    self.unknown.add(name)
                    log.error("history of group %r not kept: the store never created it", name)
                continue
            rows.append((gid, *pack(entries)))
        if not rows:
            return
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT INTO history_chunks (group_id, count, times, senders, texts) "
                "VALUES (?, ?, ?, ?, ?)", rows)
            stored = self.stored
            limit = keep + max(1, int(keep * self.PRUNE_SLACK))
            for row in rows:
                gid = row[0]
                stored[gid] = stored.get(gid, 0) + row[1]
                if stored[gid] > limit:
                    stored[gid] = self._prune(gid, keep)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            try:
                self.stored = dict(db.execute(
                    "SELECT group_id, SUM(count) FROM history_chunks GROUP BY group_id"))
            except sqlite3.Error:
                pass  # keep the old counts: a group's next prune recounts it
            raise

    def _prune(self, gid: int, keep: int) -> int:
        """Delete the chunks wholly older than the last `keep` entries; entries left."""
        total, boundary = 0, None
        for chunk_id, count in self.db.execute(
            "SELECT id, count FROM history_chunks WHERE group_id = ? ORDER BY id DESC", (gid,)
        ):
            total += count
            boundary = chunk_id
            if total >= keep:
                break
        if boundary is not None:
            self.db.execute(
                "DELETE FROM history_chunks WHERE group_id = ? AND id < ?", (gid, boundary))
        return total

    # ------------------------------------------------------------ accounts

    def put_roles(self, name: str, data: str) -> None:
        if self._durably(
            "INSERT OR REPLACE INTO group_roles (group_id, data) "
            "SELECT id, ? FROM groups WHERE name = ?", (data, name)) != 1:
            raise StoreError(f"no group {name!r} in {self.path}")

    def load_roles(self) -> list[tuple[str, str]]:
        try:
            return self.db.execute(
                "SELECT g.name, r.data FROM group_roles r JOIN groups g ON g.id = r.group_id"
            ).fetchall()
        except sqlite3.Error as err:
            raise StoreError(describe_db_error(self.path, err)) from None

    # ------------------------------------------------------------ audit

    def append_audit(self, entries: list[AuditEntry]) -> None:
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT INTO audit (at, actor, action, group_name, group_key, target, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(e.at, e.actor, e.action, e.group,
                  None if e.group is None else name_key(normalize(e.group)), e.target, e.detail)
                 for e in entries])
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    def read_audit(self, limit: int, group_key: str | None = None) -> list[AuditEntry]:
        sql = "SELECT at, actor, action, group_name, target, detail FROM audit"
        args: tuple[object, ...] = (limit,)
        if group_key is not None:
            sql += " WHERE group_key = ?"
            args = (group_key, limit)
        try:
            rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", args).fetchall()
        except sqlite3.Error as err:
            raise StoreError(describe_db_error(self.path, err)) from None
        return [AuditEntry(*row) for row in rows]

    def load_accounts(self) -> list[Account]:
        try:
            rows = self.db.execute(
                "SELECT name, phc, created_at, generation, suspended, last_login FROM accounts"
            ).fetchall()
        except sqlite3.Error as err:
            raise StoreError(describe_db_error(self.path, err)) from None
        return [Account(name, phc, created_at, generation, bool(suspended), last_login)
                for name, phc, created_at, generation, suspended, last_login in rows]

    def _durably(self, sql: str, args: tuple[object, ...]) -> int:
        """One statement committed with the WAL fsynced (its answer is a promise)."""
        db = self.db
        db.execute("PRAGMA synchronous = FULL")
        try:
            return db.execute(sql, args).rowcount
        finally:
            db.execute("PRAGMA synchronous = NORMAL")

    def add_account(self, account: Account) -> bool:
        return self._durably(
            "INSERT OR IGNORE INTO accounts (key, name, phc, created_at, generation, suspended, "
            "last_login) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (account.key, account.name, account.phc, account.created_at, account.generation,
             int(account.suspended), account.last_login),
        ) == 1

    def put_account(self, account: Account) -> None:
        self._durably(
            "UPDATE accounts SET name = ?, phc = ?, created_at = ?, generation = ?, "
            "suspended = ? WHERE key = ?",
            (account.name, account.phc, account.created_at, account.generation,
             int(account.suspended), account.key),
        )

    def delete_account(self, key: str) -> bool:
        return self._durably("DELETE FROM accounts WHERE key = ?", (key,)) == 1

    def record_logins(self, logins: list[tuple[str, float]]) -> None:
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany("UPDATE accounts SET last_login = ? WHERE key = ?",
                           [(at, key) for key, at in logins])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def token_key(self, fresh: bytes) -> bytes:
        db = self.db
        row = db.execute("SELECT value FROM secrets WHERE name = 'token_key'").fetchone()
        if row is not None:
            return bytes(row[0])
        self._durably("INSERT INTO secrets (name, value) VALUES ('token_key', ?)", (fresh,))
        return fresh

    def close(self) -> None:
        try:
            self.db.close()  # the last connection checkpoints and removes the WAL
        finally:
            self.lock.release()


# ---------------------------------------------------------------- backup and restore


@dataclass(frozen=True)
class Summary:
    groups: int
    messages: int
    version: int
    size: int
    accounts: int = 0
    audit: int = 0

    def __str__(self) -> str:
        return (f"{self.groups} groups, {self.messages} history messages, "
                f"{self.accounts} accounts, {self.audit} audit entries, "
                f"schema version {self.version}, {self.size:,} bytes")


def summarize(db: sqlite3.Connection, path: Path) -> Summary:
    version = read_version(db)
    if version > schema_version():
        raise StoreError(f"{path}: schema version {version} is newer than this chatsrv "
                         f"understands ({schema_version()})")
    if version == 0:
        return Summary(0, 0, 0, path.stat().st_size)
    groups = db.execute("SELECT COUNT(*) FROM groups").fetchone()[0]
    messages = db.execute("SELECT COALESCE(SUM(count), 0) FROM history_chunks").fetchone()[0]
    accounts = db.execute("SELECT COUNT(*) FROM accounts").fetchone()[0] if version >= 2 else 0
    audit = db.execute("SELECT COUNT(*) FROM audit").fetchone()[0] if version >= 4 else 0
    return Summary(groups, messages, version, path.stat().st_size, accounts, audit)


def _check(db: sqlite3.Connection, path: Path) -> None:
    result = db.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise StoreError(f"{path}: integrity check failed: {result}")


def _copy(src: sqlite3.Connection, dest: Path) -> None:
    """Copy `src` into a fresh single-file database at `dest` (rollback journal, fsynced)."""
    dest.unlink(missing_ok=True)
    out = sqlite3.connect(dest, isolation_level=None)
    try:
        src.backup(out)  # all pages in one step: a consistent snapshot, writers not blocked
        out.execute("PRAGMA journal_mode = DELETE")
        _check(out, dest)
    finally:
        out.close()
    _fsync(dest)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup(data_dir: Path, dest: Path) -> Summary:
    """Online backup of the live database (the server may be running) to `dest`."""
    live = Path(data_dir) / DB_NAME
    dest = Path(dest)
    if not live.is_file():
        raise StoreError(f"no database at {live} (wrong --data-dir?)")
    if dest.resolve() == live.resolve():
        raise StoreError("the backup path is the live database itself")
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        src = connect(live, readonly=True)
        try:
            read_version(src)
            _copy(src, partial)
        finally:
            src.close()
        os.replace(partial, dest)
    except sqlite3.Error as err:
        partial.unlink(missing_ok=True)
        raise StoreError(describe_db_error(live, err)) from None
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise StoreError(f"cannot write {dest}: {err.strerror}") from None
    return inspect(dest)


def inspect(path: Path) -> Summary:
    """Open a database file read-only, check it, and count what it holds."""
    try:
        db = connect(Path(path), readonly=True)
        try:
            _check(db, Path(path))
            return summarize(db, Path(path))
        finally:
            db.close()
    except sqlite3.Error as err:
        raise StoreError(f"{path}: {err}") from None


def restore(data_dir: Path, source: Path) -> tuple[Summary, Path | None]:
    """Replace the data directory's database with a backup; refuses while a server runs.

    The files being replaced are moved aside as they are (`chatsrv.db.pre-restore`,
    returned, with its `-wal` if any), so a restore of the wrong file can be
    undone, and a corrupt database can be replaced without being read."""
    data_dir, source = Path(data_dir), Path(source)
    if not source.is_file():
        raise StoreError(f"no backup file at {source}")
    summary = inspect(source)
    if summary.version == 0:
        raise StoreError(f"{source}: not a chatsrv backup (empty database)")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot use data directory {data_dir}: {err.strerror}") from None
    live = data_dir / DB_NAME
    saved = data_dir / (DB_NAME + ".pre-restore")
    with DirLock(data_dir):
        staged = data_dir / (DB_NAME + ".restoring")
        try:
            src = connect(source, readonly=True)
            try:
                _copy(src, staged)
            finally:
                src.close()
            moved = live.exists()
            for suffix in ("", "-wal", "-shm"):
                Path(str(saved) + suffix).unlink(missing_ok=True)
                if Path(str(live) + suffix).exists():
                    os.replace(str(live) + suffix, str(saved) + suffix)
            os.replace(staged, live)
            _fsync(data_dir)
        except sqlite3.Error as err:
            staged.unlink(missing_ok=True)
            raise StoreError(f"{source}: {err}") from None
        except OSError as err:
            staged.unlink(missing_ok=True)
            raise StoreError(f"cannot restore into {data_dir}: {err.strerror}") from None
    return summary, saved if moved else None

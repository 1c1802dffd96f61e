"""The stores, the hub's persistence journal and the writer, driven directly."""

from __future__ import annotations

import dataclasses
import sqlite3
import time

import gevent
import pytest

from chatsrv.core.accounts import Account
from chatsrv.core.hub import Hub
from chatsrv.store import GroupRecord, MemoryStore, StoreError
from chatsrv.store import sqlite as S
from chatsrv.store.lock import DirLock
from chatsrv.store.sqlite import SqliteStore, backup, inspect, pack, restore, unpack
from chatsrv.store.writer import StoreWriter


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


def lines(user) -> list[str]:
    out = b"".join(user.queue).decode().splitlines()
    user.queue.clear()
    return out


@pytest.fixture
def store(tmp_path):
    opened = SqliteStore(tmp_path / "data")
    opened.load(10)
    yield opened
    opened.close()


def entries(n: int, start: int = 0, sender: str = "alice") -> list[tuple[float, str, str]]:
    return [(1_700_000_000.0 + i, sender, f"m{i}") for i in range(start, start + n)]


# --------------------------------------------------------------------- packing


def test_pack_round_trip_keeps_every_character_but_lf():
    items = [(1.5, "Ψ", "tab\there  "), (2.25, "d-é_.x", " "), (1e9 + 0.125, "a", "ZWNJ\u200cx")]
    assert unpack(*pack(items)) == items


def test_unpack_rejects_a_chunk_that_does_not_match_its_count():
    count, times, senders, texts = pack(entries(3))
    with pytest.raises(sqlite3.DatabaseError):
        unpack(count, times, senders, texts + "\nextra")


# --------------------------------------------------------------------- sqlite store


def test_new_store_has_general_and_schema_version(tmp_path, store):
    loaded = store.load(10)
    assert [g.record.name for g in loaded] == ["General"]
    db = sqlite3.connect(tmp_path / "data" / "chatsrv.db")
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(S.schema_version(),)]
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_groups_and_history_round_trip(tmp_path, store):
    store.create_group(GroupRecord("Dev", "alice", 123.5))
    store.append_history([("Dev", entries(3)), ("General", entries(2, sender="bob"))], keep=10)
    store.append_history([("Dev", entries(2, start=3))], keep=10)
    store.close()
    again = SqliteStore(tmp_path / "data")
    try:
        loaded = {g.record.name: g for g in again.load(10)}
        assert loaded["Dev"].record == GroupRecord("Dev", "alice", 123.5)
        assert loaded["Dev"].history == entries(5)
        assert loaded["General"].history == entries(2, sender="bob")
        assert [g.history for g in again.load(2) if g.record.name == "Dev"] == [entries(2, 3)]
        assert [g.history for g in again.load(0) if g.record.name == "Dev"] == [[]]
    finally:
        again.close()


def test_pruning_keeps_the_last_entries_and_deletes_old_chunks(tmp_path, store):
    for i in range(40):
        store.append_history([("General", entries(1, start=i))], keep=10)
    db = sqlite3.connect(tmp_path / "data" / "chatsrv.db")
    rows = db.execute("SELECT COUNT(*), SUM(count) FROM history_chunks").fetchone()
    assert 10 <= rows[1] <= 10 + int(10 * SqliteStore.PRUNE_SLACK) + 1  # bounded, with slack
    assert store.load(10)[0].history == entries(10, start=30)
    store.append_history([("General", entries(25, start=40))], keep=10)  # one big chunk
    assert db.execute("SELECT COUNT(*) FROM history_chunks").fetchone()[0] <= 2
    assert store.load(10)[0].history == entries(10, start=55)


def test_history_of_an_unknown_group_is_logged_and_does_not_block_the_others(store, caplog):
    store.append_history([("Nope", entries(1)), ("General", entries(2))], keep=10)
    store.append_history([("Nope", entries(1))], keep=10)
    assert store.load(10)[0].history == entries(2)
    assert caplog.text.count("history of group 'Nope' not kept") == 1


def test_failed_append_leaves_nothing_half_written(tmp_path, store, monkeypatch):
    store.append_history([("General", entries(2))], keep=10)

    def broken(gid, keep):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_prune", broken)
    with pytest.raises(sqlite3.OperationalError):
        store.append_history([("General", entries(20, start=2))], keep=10)  # prune fails
    monkeypatch.undo()
    assert store.load(10)[0].history == entries(2)  # the failed batch was rolled back
    assert store.stored == {1: 2}


def test_second_store_on_the_same_directory_is_refused(tmp_path, store):
    with pytest.raises(StoreError, match="in use by another process"):
        SqliteStore(tmp_path / "data")
    store.close()
    SqliteStore(tmp_path / "data").close()  # free again once closed


def test_unusable_directory(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot use data directory .*: Not a directory"):
        SqliteStore(tmp_path / "file" / "data")


def test_corrupt_and_foreign_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "chatsrv.db").write_bytes(b"\x00garbage" * 2000)
    with pytest.raises(StoreError, match="file is not a database"):
        SqliteStore(data)
    (data / "chatsrv.db").unlink()
    foreign = sqlite3.connect(data / "chatsrv.db")
    foreign.execute("CREATE TABLE other (x)")
    foreign.close()
    with pytest.raises(StoreError, match="not a chatsrv database"):
        SqliteStore(data)
    DirLock(data).acquire().release()  # a refused start does not keep the lock


def test_forward_migration_runs_once(tmp_path, monkeypatch):
    SqliteStore(tmp_path / "data").close()
    extra = "ALTER TABLE groups ADD COLUMN topic TEXT NOT NULL DEFAULT ''"
    monkeypatch.setattr(S, "MIGRATIONS", (*S.MIGRATIONS, extra))
    store = SqliteStore(tmp_path / "data")
    current = len(S.MIGRATIONS) - 1
    assert store.migrated_from == current
    store.create_group(GroupRecord("Dev", "a", 1.0))
    store.close()
    again = SqliteStore(tmp_path / "data")  # at the newest version now: nothing to do
    assert again.migrated_from == current + 1
    columns = [row[1] for row in again.db.execute("PRAGMA table_info(groups)")]
    assert columns[-1] == "topic"
    again.close()


def test_version_1_database_gains_accounts_and_keeps_its_data(tmp_path, monkeypatch):
    """A database written before accounts existed (schema 1) migrates in place."""
    with monkeypatch.context() as m:
        m.setattr(S, "MIGRATIONS", S.MIGRATIONS[:1])
        old = SqliteStore(tmp_path / "data")
        old.load(10)
        old.create_group(GroupRecord("Dev", "alice", 5.0))
        old.append_history([("Dev", entries(3))], keep=10)
        old.close()
    store = SqliteStore(tmp_path / "data")
    assert store.migrated_from == 1
    groups = {g.record.name: g for g in store.load(10)}
    assert [e[2] for e in groups["Dev"].history] == ["m0", "m1", "m2"]
    assert store.load_accounts() == []
    store.close()


def test_accounts_round_trip_and_are_durable(tmp_path, store):
    alice = Account("Alice", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA", 10.0)
    assert store.add_account(alice)
    assert not store.add_account(Account("ALICE", "$argon2id$other", 11.0))  # same key
    changed = dataclasses.replace(alice, phc="$argon2id$new", generation=3, suspended=True)
    store.put_account(changed)
    store.record_logins([("alice", 42.5)])
    assert store.add_account(Account("bob", "$argon2id$b", 12.0))
    assert store.delete_account("bob")
    assert not store.delete_account("bob")
    key = store.token_key(b"k" * 32)
    assert store.token_key(b"other" * 8) == key == b"k" * 32  # kept, not replaced
    store.close()
    again = SqliteStore(tmp_path / "data")
    assert again.load_accounts() == [dataclasses.replace(changed, last_login=42.5)]
    assert again.token_key(b"x" * 32) == b"k" * 32
    again.close()


def test_backup_carries_accounts(tmp_path, store):
    store.add_account(Account("alice", "$argon2id$a", 1.0))
    summary = backup(tmp_path / "data", tmp_path / "b.db")
    assert summary.accounts == 1 and "1 accounts" in str(summary)
    store.close()
    restore(tmp_path / "other", tmp_path / "b.db")
    moved = SqliteStore(tmp_path / "other")
    assert [a.name for a in moved.load_accounts()] == ["alice"]
    moved.close()


def test_audit_newest_first_filtered_and_carried_by_backup(tmp_path, store):
    from chatsrv.core.audit import AuditEntry

    store.create_group(GroupRecord("Dev", "alice", 5.0))
    store.append_audit([AuditEntry(1.0, "alice", "set", "Dev", None, "join invite"),
                        AuditEntry(2.0, "admin", "account.create", None, "bob")])
    store.append_audit([AuditEntry(3.0, "bob", "kick", "Dev", "carol", "spam")])
    assert [e.at for e in store.read_audit(10)] == [3.0, 2.0, 1.0]
    assert store.read_audit(1) == [AuditEntry(3.0, "bob", "kick", "Dev", "carol", "spam")]
    assert [e.action for e in store.read_audit(10, "dev")] == ["kick", "set"]
    assert store.read_audit(10, "ops") == []
    summary = backup(tmp_path / "data", tmp_path / "b.db")
    assert summary.audit == 3 and "3 audit entries" in str(summary)
    store.close()
    restore(tmp_path / "other", tmp_path / "b.db")
    moved = SqliteStore(tmp_path / "other")
    assert [e.action for e in moved.read_audit(10)] == ["kick", "account.create", "set"]
    moved.close()
    memory = MemoryStore()
    memory.append_audit([AuditEntry(1.0, "a", "mute", "Dev", "b", "5"),
                         AuditEntry(2.0, "a", "mute", "Ops", "b", None)])
    assert [e.group for e in memory.read_audit(5)] == ["Ops", "Dev"]
    assert [e.group for e in memory.read_audit(5, "dev")] == ["Dev"]


def test_newer_schema_is_refused(tmp_path):
    SqliteStore(tmp_path / "data").close()
    db = sqlite3.connect(tmp_path / "data" / "chatsrv.db")
    db.execute("UPDATE schema_version SET version = 7")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 7 is newer"):
        SqliteStore(tmp_path / "data")


def test_backup_inspect_and_restore(tmp_path, store):
    store.create_group(GroupRecord("Dev", "alice", 5.0))
    store.append_history([("Dev", entries(4))], keep=10)
    summary = backup(tmp_path / "data", tmp_path / "b.db")  # while the store is open
    assert (summary.groups, summary.messages, summary.version) == (2, 4, S.schema_version())
    assert inspect(tmp_path / "b.db") == summary
    assert not (tmp_path / "b.db-wal").exists()  # a self-contained single file
    with pytest.raises(StoreError, match="in use by another process"):
        restore(tmp_path / "data", tmp_path / "b.db")
    store.append_history([("Dev", entries(1, start=4))], keep=10)
    store.close()
    restored, saved = restore(tmp_path / "data", tmp_path / "b.db")
    assert restored == summary and saved == tmp_path / "data" / "chatsrv.db.pre-restore"
    again = SqliteStore(tmp_path / "data")
    try:
        assert [g.history for g in again.load(10) if g.record.name == "Dev"] == [entries(4)]
    finally:
        again.close()
    assert inspect(saved).messages == 5  # the replaced database, WAL content included


def test_backup_refuses_to_overwrite_the_live_database(tmp_path, store):
    with pytest.raises(StoreError, match="live database itself"):
        backup(tmp_path / "data", tmp_path / "data" / "chatsrv.db")


def test_memory_store_keeps_nothing():
    store = MemoryStore()
    store.create_group(GroupRecord("Dev", "a", 1.0))
    store.append_history([("Dev", entries(3))], keep=10)
    assert store.load(10) == [] and store.durable is False


# --------------------------------------------------------------------- the hub's journal


@pytest.fixture
def hub():
    return Hub(clock=FakeClock(), history=5, durable=True)


def test_durable_create_waits_for_the_commit(hub):
    alice = hub.login("alice")
    lines(alice)
    hub.handle(alice, "create Dev")
    assert lines(alice) == [] and hub.commits.uncommitted == [(alice, hub.commits.reserved["dev"])]
    hub.handle(alice, "groups")
    assert lines(alice) == ["groups: General"]  # not visible before the commit
    bob = hub.login("bob")
    lines(alice)
    hub.handle(bob, "create DEV")
    hub.handle(bob, "join Dev")
    assert lines(bob)[2:] == [] and [line for _, _, line in hub.commits.blocked] == ["create DEV",
                                                                             "join Dev"]
    (creator, group), = hub.commits.uncommitted
    hub.commits.uncommitted.clear()
    hub.group_committed(group, creator)
    assert lines(alice) == ["ok: created group Dev"] and "dev" in hub.groups


def test_failed_commit_frees_the_name(hub):
    alice = hub.login("alice")
    hub.handle(alice, "create Dev")
    (creator, group), = hub.commits.uncommitted
    lines(alice)
    hub.commits.not_committed(group, creator)
    assert lines(alice) == ["error: group not created, storage failed: Dev"]
    assert "dev" not in hub.groups and "dev" not in hub.commits.reserved
    hub.logout(alice)
    hub.handle(hub.login("bob"), "create Dev")  # free again
    assert hub.commits.uncommitted[-1][1].name == "Dev"


def test_journal_takes_the_newest_unsaved_entries_once(hub):
    alice = hub.login("alice")
    for i in range(3):
        hub.handle(alice, f"public General m{i}")
    batch = hub.take_unsaved()
    assert [(g.name, [t for _, _, t in e]) for g, e in batch] == [("General", ["m0", "m1", "m2"])]
    assert hub.take_unsaved() == []
    for i in range(3, 11):  # 8 more than the ring of 5 holds: only the last 5 exist
        hub.handle(alice, f"public General m{i}")
    batch = hub.take_unsaved()
    assert [t for _, _, t in batch[0][1]] == ["m6", "m7", "m8", "m9", "m10"]
    hub.unsaved_again(batch)  # a failed write: the next flush retries, with newer ones
    hub.handle(alice, "public General m11")
    assert [t for _, _, t in hub.take_unsaved()[0][1]] == ["m7", "m8", "m9", "m10", "m11"]


def test_non_durable_hub_answers_at_once_and_journals_nothing():
    hub = Hub(clock=FakeClock(), history=5)
    alice = hub.login("alice")
    lines(alice)
    hub.handle(alice, "create Dev")
    hub.handle(alice, "public General x")
    assert lines(alice) == ["ok: created group Dev"]
    assert hub.commits.uncommitted == [] and hub.journal is None and hub.take_unsaved() == []


def test_restore_group_puts_back_history_within_the_ring(hub):
    hub.restore_group("General", "", 1.0, entries(7))
    hub.restore_group("Dev", "alice", 2.0, entries(2))
    assert [t for _, _, t in hub.groups["general"].history] == ["m2", "m3", "m4", "m5", "m6"]
    assert hub.groups["dev"].created_by == "alice"


# --------------------------------------------------------------------- the writer (gevent)


class FlakyStore(MemoryStore):
    """Durable-looking store whose first history write fails, then records everything."""

    durable = True

    def __init__(self) -> None:
        self.written: list = []
        self.failures = 1
        self.groups: list = []

    def append_history(self, batch, keep):
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        self.written.extend((name, [t for _, _, t in e]) for name, e in batch)

    def create_group(self, record):
        if record.name == "Broken":
            raise sqlite3.OperationalError("database or disk is full")
        self.groups.append(record.name)


def test_writer_commits_creates_and_retries_failed_history(monkeypatch):
    # This test is about outcomes, not the 10 s limit: on a machine loaded enough
    # (a full suite beside other work) the writer thread once took longer than that.
    monkeypatch.setattr("chatsrv.store.writer.CREATE_TIMEOUT_S", 120.0)
    store = FlakyStore()
    hub = Hub(clock=FakeClock(), history=100, durable=True)
    writer = StoreWriter(store, hub, flush_ms=10, keep=100)
    alice = hub.login("alice")
    lines(alice)
    hub.handle(alice, "create Dev")
    writer.settle()
    hub.handle(alice, "create Broken")
    writer.settle()
    assert lines(alice) == ["ok: created group Dev",
                            "error: group not created, storage failed: Broken"]
    assert store.groups == ["Dev"] and "broken" not in hub.commits.reserved
    hub.handle(alice, "public General a")
    writer.flush()  # fails: kept for the next flush
    assert writer.stats.failures == 1 and store.written == []
    hub.handle(alice, "public General b")
    writer.start()
    deadline = time.monotonic() + 10
    while not store.written and time.monotonic() < deadline:  # the flusher's next turn
        gevent.sleep(0.01)
    writer.close()
    assert store.written == [("General", ["a", "b"])]


class SlowStore(MemoryStore):
    durable = True

    def create_group(self, record):
        import time

        time.sleep(0.1)  # in the writer thread: the event loop keeps running


def test_commands_naming_a_group_being_committed_wait_for_it():
    hub = Hub(clock=FakeClock(), history=10, durable=True)
    writer = StoreWriter(SlowStore(), hub, flush_ms=10, keep=10)
    alice, bob, carol = hub.login("alice"), hub.login("bob"), hub.login("carol")
    for user in (alice, bob, carol):
        lines(user)
    order = []

    def run(user, line):
        hub.handle(user, line)
        if hub.commits.uncommitted or hub.commits.blocked:
            writer.settle()
        order.append((user.name, line))

    creating = gevent.spawn(run, alice, "create Dev")
    gevent.sleep(0)  # alice's commit is in flight
    others = [gevent.spawn(run, bob, "create dev"), gevent.spawn(run, carol, "join DEV")]
    pinged = gevent.spawn(run, carol, "ping")  # not about Dev: answered at once
    pinged.join()
    assert order == [("carol", "ping")]
    gevent.joinall([creating, *others])
    assert lines(alice) == ["ok: created group Dev"]
    assert lines(bob) == ["error: group already exists: Dev"]
    assert lines(carol) == ["ok: pong", "ok: joined group Dev"]
    assert hub.stats.commands["create"] == 2 and hub.stats.commands["join"] == 1
    writer.close()


def test_writer_with_sqlite_writes_everything_on_close(tmp_path):
    store = SqliteStore(tmp_path / "data")
    hub = Hub(clock=FakeClock(), history=100, durable=True)
    for group in store.load(100):
        hub.restore_group(group.record.name, "", 0.0, group.history)
    writer = StoreWriter(store, hub, flush_ms=60_000, keep=100)  # only the final flush
    writer.start()
    alice = hub.login("alice")
    hub.handle(alice, "create Dev")
    writer.settle()
    hub.handle(alice, "join Dev")
    for i in range(30):
        hub.handle(alice, f"public Dev m{i}")
    writer.close()
    again = SqliteStore(tmp_path / "data")
    try:
        dev = [g for g in again.load(100) if g.record.name == "Dev"][0]
        assert [t for _, _, t in dev.history] == [f"m{i}" for i in range(30)]
    finally:
        again.close()


# --------------------------------------------------------------------- disk full


def _fill(store: SqliteStore) -> None:
    """Cap the database at its size now (SQLITE_FULL past it), as a full disk does."""
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages + 2}")


def test_a_full_database_reports_disk_full_not_cannot_rollback(store):
    store.create_group(GroupRecord("dev", "alice", 1.0))
    _fill(store)
    big = [(1_700_000_000.0 + i, "alice", "x" * 3000) for i in range(50)]
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        store.append_history([("dev", big)], 1000)
    assert not store.db.in_transaction
    store.append_history([("dev", entries(2))], 1000)  # room for a little: works again


def test_writer_logs_the_full_disk_once_through_the_logger(tmp_path, store, caplog, capfd):
    hub = Hub(clock=FakeClock(), durable=True)
    writer = StoreWriter(store, hub, flush_ms=10, keep=1000)
    _fill(store)
    general = hub.groups["general"]
    alice = hub.login("alice")
    for i in range(5):
        for _ in range(20):
            hub.handle(alice, f"public General {i} " + "x" * 3000)
        writer.flush()
    errors = [r for r in caplog.records if r.name == "chatsrv.store"]
    assert len(errors) == 1  # once a minute, not once a flush
    assert errors[0].getMessage().endswith(": database or disk is full")
    assert "cannot rollback" not in caplog.text
    # Nothing printed beside the logger (gevent prints a failed ThreadPool job's traceback).
    assert "Traceback" not in capfd.readouterr().err
    assert general.unsaved  # kept for the next try
    writer.pool.kill()


def test_version_2_database_gains_group_roles(tmp_path, monkeypatch):
    """Schema 3 (group roles) migrates a version 2 database in place; roles are
    written durably, read back by group name, and go with a deleted group."""
    with monkeypatch.context() as m:
        m.setattr(S, "MIGRATIONS", S.MIGRATIONS[:2])
        old = SqliteStore(tmp_path / "data")
        old.load(10)
        old.create_group(GroupRecord("Dev", "alice", 5.0))
        old.close()
    store = SqliteStore(tmp_path / "data")
    assert store.migrated_from == 2
    store.load(10)
    assert store.load_roles() == []
    store.put_roles("Dev", '{"owner": "alice"}')
    store.create_group(GroupRecord("Ops", "Bob", 6.0, owner="bob"))
    store.create_group(GroupRecord("Guests", "gus", 7.0))
    store.put_roles("Dev", '{"owner": "carol"}')  # replaces
    assert sorted(store.load_roles()) == [("Dev", '{"owner": "carol"}'), ("Ops", '{"owner": "bob"}')]
    with pytest.raises(StoreError):
        store.put_roles("Nope", "{}")
    assert store.delete_group("Ops")
    store.close()
    again = SqliteStore(tmp_path / "data")
    again.load(10)
    assert again.load_roles() == [("Dev", '{"owner": "carol"}')]
    again.close()

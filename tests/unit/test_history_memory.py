"""`--history-memory`: the hub's global budget for history kept in RAM, the store
reads that answer `history` beyond it, and the writer's answer to a stuck disk."""

from __future__ import annotations

import logging
import threading
import time

import gevent
import pytest
from test_store import FakeClock, lines

from chatsrv.core.commits import StoredQuery
from chatsrv.core.hub import Hub
from chatsrv.core.model import ENTRY_OVERHEAD, entry_size
from chatsrv.store import GroupRecord, MemoryStore
from chatsrv.store import writer as W
from chatsrv.store.sqlite import SqliteStore
from chatsrv.store.writer import StoreWriter


def size_of(text: str, sender: str = "alice") -> int:
    return entry_size((0.0, sender, text))


def ring_texts(hub: Hub, key: str) -> list[str]:
    return [text for _, _, text in hub.groups[key].history]


def accounted(hub: Hub) -> int:
    return sum(entry_size(e) for g in hub.groups.values() for e in g.history)


def make_hub(budget_entries: int, *, history: int = 100, durable: bool = False,
             text: str = "m000") -> Hub:
    """A hub whose budget holds exactly `budget_entries` entries like `text` from alice."""
    hub = Hub(clock=FakeClock(), history=history, durable=durable,
              history_memory=budget_entries * size_of(text))
    return hub


def with_groups(hub: Hub, *names: str):
    alice = hub.login("alice")
    for name in names:
        group = hub.reserve_group(name, "alice")
        hub.group_committed(group, None)
        hub.handle(alice, f"join {name}")
    lines(alice)
    return alice


# --------------------------------------------------------------------- the hub's accounting


def test_entry_size_counts_text_sender_and_the_measured_overhead():
    assert size_of("m000") == size_of("") + 4
    assert size_of("é" * 10) > size_of("e" * 10)  # 2 bytes per character once not Latin-1
    assert size_of("x", sender="bob") - size_of("x", sender="b") == 2
    assert size_of("") >= ENTRY_OVERHEAD + 49


def test_budget_evicts_the_oldest_entries_of_the_whole_server_first():
    hub = make_hub(10)
    alice = with_groups(hub, "A", "B", "C")
    for i in range(30):  # round-robin: A gets 0, 3, 6, ...
        hub.handle(alice, f"public {'ABC'[i % 3]} m{i:03d}")
        assert hub.history_bytes <= hub.history_budget
        assert hub.history_bytes == accounted(hub)
    kept = sorted(ring_texts(hub, "a") + ring_texts(hub, "b") + ring_texts(hub, "c"))
    assert kept == [f"m{i:03d}" for i in range(20, 30)]  # the 10 newest, whatever the group
    assert ring_texts(hub, "a") == ["m021", "m024", "m027"]


def test_a_quiet_group_loses_its_history_to_busy_ones_before_they_lose_theirs():
    hub = make_hub(6)
    alice = with_groups(hub, "Quiet", "Busy")
    hub.handle(alice, "public Quiet q00")
    for i in range(5):
        hub.handle(alice, f"public Busy b{i:02d}")
    assert ring_texts(hub, "quiet") == ["q00"]
    hub.handle(alice, "public Busy b05")
    assert ring_texts(hub, "quiet") == [] and len(ring_texts(hub, "busy")) == 6


def test_ring_drops_are_accounted_and_their_records_compacted():
    hub = Hub(clock=FakeClock(), history=3, history_memory=1 << 30)
    alice = with_groups(hub)
    for i in range(20_000):
        hub.handle(alice, f"public General m{i}")
    assert ring_texts(hub, "general") == ["m19997", "m19998", "m19999"]
    assert hub.history_bytes == accounted(hub)
    # One record per kept entry plus those not compacted yet: bounded, not 20,000.
    assert len(hub.history_order) <= 2 * (3 + 4096) + 1


def test_eviction_after_ring_drops_still_takes_the_right_entries():
    hub = make_hub(4, history=3)
    alice = with_groups(hub, "A", "B")
    for i in range(5):
        hub.handle(alice, f"public A m{i:03d}")  # the ring drops m000, m001
    hub.handle(alice, "public B m100")
    hub.handle(alice, "public B m101")  # 5 entries > 4: the oldest kept one, m002, goes
    assert ring_texts(hub, "a") == ["m003", "m004"] and ring_texts(hub, "b") == ["m100", "m101"]
    assert hub.history_bytes == accounted(hub) <= hub.history_budget


def test_entries_the_store_does_not_have_are_never_evicted():
    hub = make_hub(3, durable=True)
    alice = with_groups(hub)
    for i in range(8):
        hub.handle(alice, f"public General m{i:03d}")
    assert len(ring_texts(hub, "general")) == 8  # unsaved: over budget, kept
    batch = hub.take_unsaved()
    hub.handle(alice, "public General m008")
    hub.trim_history()
    assert len(ring_texts(hub, "general")) == 9  # 8 pending + 1 unsaved
    hub.unsaved_again(batch)  # the write failed: still kept, retried next time
    assert len(ring_texts(hub, "general")) == 9
    batch = hub.take_unsaved()
    assert [t for _, _, t in batch[0][1]] == [f"m{i:03d}" for i in range(9)]
    hub.history_saved(batch)
    assert ring_texts(hub, "general") == ["m006", "m007", "m008"]
    assert hub.history_bytes == accounted(hub)


def test_history_beyond_memory_asks_the_store_only_when_it_has_more():
    hub = make_hub(3, durable=True)
    alice = with_groups(hub)
    hub.handle(alice, "history General 5")
    assert hub.commits.queries == [] and lines(alice) == ["ok: end of history General"]
    for i in range(6):
        hub.handle(alice, f"public General m{i:03d}")
    hub.history_saved(hub.take_unsaved())
    hub.handle(alice, "history General 2")  # memory has them
    assert hub.commits.queries == [] and len(lines(alice)) == 3
    hub.handle(alice, "history General 5")
    query, = hub.commits.queries
    assert isinstance(query, StoredQuery)
    assert (query.user, query.before, query.count) == (alice, 3, 2)
    assert [t for _, _, t in query.kept] == ["m003", "m004", "m005"]


def test_memory_store_history_is_what_the_budget_keeps():
    hub = make_hub(3)
    alice = with_groups(hub)
    for i in range(6):
        hub.handle(alice, f"public General m{i:03d}")
    hub.handle(alice, "history General 5")
    assert hub.commits.queries == []
    assert [line.rsplit("] ", 1)[1] for line in lines(alice)[:-1]] == ["m003", "m004", "m005"]


def test_restored_history_is_trimmed_to_the_budget_oldest_first():
    hub = make_hub(4, history=10)
    hub.restore_group("A", "", 1.0, [(10.0 + i, "alice", f"a{i:02d}") for i in range(3)], 50)
    hub.restore_group("B", "", 1.0, [(11.5 + i // 2, "alice", f"b{i:02d}") for i in range(3)], 3)
    hub.restored()
    assert ring_texts(hub, "a") == ["a02"] and ring_texts(hub, "b") == ["b00", "b01", "b02"]
    assert hub.groups["a"].seq == 50 and hub.history_bytes == accounted(hub)


# --------------------------------------------------------------------- the store's part


def test_sqlite_load_keeps_the_newest_entries_that_fit(tmp_path):
    store = SqliteStore(tmp_path / "data")
    store.load(100)
    for name in ("A", "B"):
        store.create_group(GroupRecord(name, "", 0.0))
    for i in range(10):
        store.append_history([("A", [(float(i), "alice", f"a{i:02d}")]),
                              ("B", [(float(i), "alice", f"b{i:02d}")])], keep=100)
    store.close()
    again = SqliteStore(tmp_path / "data")
    try:
        loaded = {g.record.name: g for g in again.load(100, budget=7 * size_of("a00"))}
        # B's chunk of each batch is the newer: b09 a09 b08 a08 b07 a07 b06 fit.
        assert [t for _, _, t in loaded["A"].history] == ["a07", "a08", "a09"]
        assert [t for _, _, t in loaded["B"].history] == ["b06", "b07", "b08", "b09"]
        assert loaded["A"].total == 10
        assert [t for _, _, t in again.read_older("A", 4, 3)] == ["a03", "a04", "a05"]
        assert [t for _, _, t in again.read_older("A", 8, 5)] == ["a00", "a01"]
        assert again.read_older("A", 10, 5) == [] and again.read_older("Nope", 0, 5) == []
    finally:
        again.close()


def test_history_across_the_seam_with_messages_sent_while_the_read_is_in_flight(tmp_path):
    store = SqliteStore(tmp_path / "data")
    hub = Hub(clock=FakeClock(), history=1000, durable=True,
              history_memory=40 * size_of("m0000"))
    for group in store.load(1000):
        hub.restore_group(group.record.name, "", 0.0, group.history, group.total)
    hub.restored()
    writer = StoreWriter(store, hub, flush_ms=60_000, keep=1000)
    writer.ends = {g.key: g.seq for g in hub.groups.values()}
    alice = hub.login("alice")
    lines(alice)
    sent = []
    for i in range(250):
        sent.append(f"m{i:04d}")
        hub.handle(alice, f"public General {sent[-1]}")
        if i % 37 == 0 or i == 239:
            writer.flush()  # chunks of uneven sizes; the last 10 stay unsaved
    # Memory: 30 entries the store also has, then 10 it has not: the read skips 30.
    assert len(hub.groups["general"].history) == 40 and hub.groups["general"].unsaved == 10
    hub.handle(alice, "history General 200")
    reading = gevent.spawn(writer.settle)
    gevent.sleep(0)  # the read is queued in the writer thread
    for i in range(250, 255):
        hub.handle(alice, f"public General m{i:04d}")
    writer.flush()
    reading.join()
    got = [line.rsplit("] ", 1)[-1] for line in lines(alice)]
    assert got == sent[-200:] + ["ok: end of history General"]
    writer.close()
    assert hub.history_bytes <= hub.history_budget


# --------------------------------------------------------------------- a stuck store


class StuckStore(MemoryStore):
    """A durable store whose writes block until `release` is set (a frozen disk)."""

    durable = True

    def __init__(self) -> None:
        self.release = threading.Event()
        self.created: list[str] = []
        self.deleted: list[str] = []

    def create_group(self, record):
        self.release.wait()
        self.created.append(record.name)

    def delete_group(self, name):
        self.deleted.append(name)
        return True

    def append_history(self, batch, keep):
        self.release.wait()


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(W, "CREATE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(W, "STALL_AFTER_S", 0.2)


def test_create_not_committed_in_time_fails_and_a_late_commit_is_undone(quick):
    store = StuckStore()
    hub = Hub(clock=FakeClock(), history=10, durable=True)
    writer = StoreWriter(store, hub, flush_ms=10, keep=10)
    alice = hub.login("alice")
    lines(alice)
    hub.handle(alice, "create Dev")
    started = time.monotonic()
    writer.settle()
    assert 0.25 < time.monotonic() - started < 2
    assert lines(alice) == ["error: group not created, storage failed: Dev"]
    assert "dev" not in hub.groups and "dev" not in hub.commits.reserved
    assert writer.stalled() > 0
    store.release.set()  # the disk answers: the late commit is undone in the thread
    deadline = time.monotonic() + 5
    while not store.deleted and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert store.created == ["Dev"] and store.deleted == ["Dev"]
    # Barrier instead of a sleep: a round trip through the writer thread, whose
    # result comes back after the late commit's (so its callback has run).
    writer.pool.apply(lambda: None)
    assert lines(alice) == [] and "dev" not in hub.groups and writer.stalled() == 0
    hub.handle(alice, "create Dev")  # free again, and the store answers now
    writer.settle()
    assert lines(alice) == ["ok: created group Dev"]
    writer.close()


def test_close_is_bounded_and_counts_what_is_lost(quick, caplog):
    store = StuckStore()
    hub = Hub(clock=FakeClock(), history=10, durable=True)
    writer = StoreWriter(store, hub, flush_ms=10, keep=10)
    writer.start()
    alice = hub.login("alice")
    for i in range(3):
        hub.handle(alice, f"public General m{i}")
    gevent.sleep(0.05)  # the flusher took them: stuck in the thread
    hub.handle(alice, "public General m3")
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="chatsrv.store"):
        writer.close(timeout=0.5)
    assert time.monotonic() - started < 1.5
    assert "4 history messages lost" in caplog.text
    store.release.set()


def test_resize_history_keeps_the_newest_and_the_accounting():
    """A reload's new --history: rings shrink from their oldest (their records in
    the eviction order go stale, as when an append pushes one out) or grow."""
    hub = make_hub(1000, history=5)
    alice = with_groups(hub, "a", "b")
    for i in range(5):
        hub.handle(alice, f"public a m{i:03d}")
    hub.handle(alice, "public b m100")
    hub.resize_history(2)
    assert ring_texts(hub, "a") == ["m003", "m004"]
    assert ring_texts(hub, "b") == ["m100"]
    assert hub.history_bytes == accounted(hub)
    hub.handle(alice, "public a m005")  # the new size holds
    assert ring_texts(hub, "a") == ["m004", "m005"]
    hub.resize_history(4)
    for i in range(6, 9):
        hub.handle(alice, f"public a m{i:03d}")
    assert ring_texts(hub, "a") == ["m005", "m006", "m007", "m008"]
    assert hub.history_bytes == accounted(hub)
    hub.handle(alice, "history a 10")
    answer = lines(alice)[-5:]
    assert [line.rpartition("] ")[2] for line in answer[:4]] == ["m005", "m006", "m007", "m008"]
    assert answer[4] == "ok: end of history a"
    # Eviction still skips the stale records and frees exactly what it counts.
    hub.history_budget = 2 * size_of("m000")
    hub.trim_history()
    assert ring_texts(hub, "a") == ["m007", "m008"] and ring_texts(hub, "b") == []
    assert hub.history_bytes == accounted(hub)
    with pytest.raises(ValueError):
        hub.resize_history(0)

"""Durable storage over real servers: restarts, kill -9 under load, start-up refusals,
backup and restore. Each test restarts `chatsrv serve` on the same `--data-dir`."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import Client, wait_for

from chatsrv.store import StoreError
from chatsrv.store.sqlite import DB_NAME, SqliteStore, inspect, schema_version

HISTORY_LINE = re.compile(
    r"\[history group (\S+) at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) from (\S+)\] (.*)"
)


def history(client: Client, group: str, count: int = 200) -> list[tuple[str, str, str]]:
    """(time, sender, text) of each line a `history` command returns."""
    client.send(f"history {group} {count}")
    lines = client.read_until(lambda line: not line.startswith("[history group "))
    assert lines[-1].startswith("ok: end of history "), lines[-1]
    return [HISTORY_LINE.fullmatch(line).group(2, 3, 4) for line in lines[:-1]]


def groups(client: Client) -> list[str]:
    line = client.request("groups")
    assert line.startswith("groups: "), line
    return line.split()[1:]


def serve_fails(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run `chatsrv serve` expected to refuse to start: (exit code, all its output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSRV_")}
    proc = subprocess.run(
        [sys.executable, "-m", "chatsrv", "serve", "--port", "0", "--web-port", "0", "--http-port", "0", *args],
        capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path,
    )
    return proc.returncode, proc.stdout + proc.stderr


def chatsrv(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSRV_")}
    return subprocess.run([sys.executable, "-m", "chatsrv", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def stored_messages(data_dir: Path) -> int:
    """History messages committed in the database so far (read-only, server running)."""
    try:
        return inspect(data_dir / DB_NAME).messages
    except StoreError:  # e.g. busy for a moment while the writer commits
        return -1


def stored_history(data_dir: Path, keep: int = 10**9) -> dict[str, list]:
    """Everything the database holds, read with the store itself (no server running)."""
    store = SqliteStore(data_dir)
    try:
        return {g.record.name: g.history for g in store.load(keep)}
    finally:
        store.close()


# --------------------------------------------------------------------- restarts


def test_groups_and_history_survive_a_clean_restart(make_server, login, tmp_path):
    server = make_server(rate_limit=0)
    alice = login(server, "alice")
    assert alice.request("create Dev") == "ok: created group Dev"
    assert alice.request("create Ψηφιακό") == "ok: created group Ψηφιακό"
    assert alice.request("join dev") == "ok: joined group Dev"
    for i in range(30):
        alice.send(f"public Dev m{i} \ttabs and ünïcode")
    alice.send("public General hello")
    before = history(alice, "Dev")
    assert [text for _, _, text in before] == [f"m{i} \ttabs and ünïcode" for i in range(30)]
    general = history(alice, "General")
    assert server.stop(signal.SIGTERM) == 0
    assert "store closed: 31 history messages" in server.log()
    assert not (tmp_path / "data" / (DB_NAME + "-wal")).exists()  # checkpointed and closed

    again = make_server(rate_limit=0)
    assert "3 groups, 31 history messages loaded" in again.log()
    bob = login(again, "bob")
    assert groups(bob) == ["Dev", "General", "Ψηφιακό"]
    assert bob.request("create DEV") == "error: group already exists: Dev"
    assert bob.request("join DEV") == "ok: joined group Dev"
    assert history(bob, "dev") == before  # same times, senders and texts, in order
    assert history(bob, "General") == general


def test_full_ring_drops_the_oldest_and_survives_restart(make_server, login):
    server = make_server(rate_limit=0, history=5)
    alice = login(server, "alice")
    for i in range(12):
        alice.send(f"public General m{i}")
    assert [t for _, _, t in history(alice, "General")] == [f"m{i}" for i in range(7, 12)]
    server.stop(signal.SIGTERM)

    again = make_server(rate_limit=0, history=5)
    bob = login(again, "bob")
    assert [t for _, _, t in history(bob, "General")] == [f"m{i}" for i in range(7, 12)]
    bob.send("public General m12")
    assert [t for _, _, t in history(bob, "General")] == [f"m{i}" for i in range(8, 13)]
    again.stop(signal.SIGTERM)

    smaller = make_server(rate_limit=0, history=3)  # a smaller ring keeps the newest
    carol = login(smaller, "carol")
    assert [t for _, _, t in history(carol, "General")] == ["m10", "m11", "m12"]


def test_memory_store_keeps_nothing(make_server, login, tmp_path):
    server = make_server(rate_limit=0, store="memory")
    alice = login(server, "alice")
    assert alice.request("create Dev") == "ok: created group Dev"
    alice.send("public General kept only in memory")
    assert [t for _, _, t in history(alice, "General")] == ["kept only in memory"]
    server.stop(signal.SIGTERM)
    assert not (tmp_path / "data" / DB_NAME).exists()

    again = make_server(rate_limit=0, store="memory")
    bob = login(again, "bob")
    assert groups(bob) == ["General"]
    assert history(bob, "General") == []


def test_history_zero_disables_the_command_and_keeps_no_messages(make_server, login):
    server = make_server(rate_limit=0, history=0)
    alice = login(server, "alice")
    assert alice.request("create Dev") == "ok: created group Dev"  # groups are still kept
    alice.send("public General not kept")
    assert alice.request("history General") == "error: history is disabled"
    server.stop(signal.SIGTERM)

    again = make_server(rate_limit=0, history=10)
    bob = login(again, "bob")
    assert groups(bob) == ["Dev", "General"]
    assert history(bob, "General") == []


def test_a_group_is_visible_only_once_committed_and_replies_stay_in_order(make_server, login):
    server = make_server(rate_limit=0)
    alice = login(server, "alice")
    alice.send("create A\ncreate B\nping\ngroups\ncreate a")
    alice.expect("ok: created group A", "ok: created group B", "ok: pong",
                 "groups: A B General", "error: group already exists: A")


# --------------------------------------------------------------------- kill -9


def test_kill_9_under_load_loses_at_most_the_last_flush_interval(make_server, login, tmp_path):
    flush_ms = 50
    server = make_server(rate_limit=0, history=100_000, flush_ms=flush_ms, notice_limit=1)
    owner = login(server, "owner")
    assert owner.request("create load") == "ok: created group load"
    senders = [login(server, f"s{k}") for k in range(4)]
    for sender in senders:
        assert sender.request("join load") == "ok: joined group load"
    creator = login(server, "creator")
    stop = threading.Event()
    acked: list[list[tuple[int, float]]] = [[] for _ in senders]  # (seq, ack time) per sender
    created: list[str] = []

    def send_loop(k: int, client: Client) -> None:
        seq = 0
        try:
            while not stop.is_set():
                # The pong comes after the message was accepted (and journaled).
                client.send(f"public load s{k} {seq}\nping")
                client.read_until(lambda line: line == "ok: pong")
                acked[k].append((seq, time.monotonic()))
                seq += 1
        except (OSError, EOFError):
            pass

    def create_loop() -> None:
        n = 0
        try:
            while not stop.is_set():
                if creator.request(f"create c{n}") == f"ok: created group c{n}":
                    created.append(f"c{n}")
                n += 1
        except (OSError, EOFError):
            pass

    threads = [threading.Thread(target=send_loop, args=(k, c)) for k, c in enumerate(senders)]
    threads.append(threading.Thread(target=create_loop))
    for thread in threads:
        thread.start()
    time.sleep(1.5)  # let the load run for ~30 flush intervals
    killed_at = time.monotonic()
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait()
    stop.set()
    for thread in threads:
        thread.join(10)

    again = make_server(rate_limit=0, history=100_000, flush_ms=flush_ms, notice_limit=1)
    checker = login(again, "checker")
    kept_groups = set(groups(checker))
    assert set(created) <= kept_groups, "an acknowledged create was lost"
    assert checker.request("join load") == "ok: joined group load"
    tail = history(checker, "load")
    again.stop(signal.SIGTERM)

    stored = stored_history(tmp_path / "data")["load"]
    assert [(t, s) for _, s, t in stored[-len(tail):]] == [(t, s) for _, s, t in tail]
    times = [at for at, _, _ in stored]
    assert times == sorted(times)
    # Per sender, what was kept is exactly a prefix of what it sent: in order, no gaps.
    kept: dict[str, list[int]] = {f"s{k}": [] for k in range(4)}
    for _, sender, text in stored:
        name, seq = text.split()
        assert name == sender
        kept[sender].append(int(seq))
    bound = flush_ms / 1000 + 0.5  # a flush interval + a commit on a loaded 2-core machine
    missing_total, oldest_lost = 0, 0.0
    for k in range(4):
        seqs = kept[f"s{k}"]
        assert seqs == list(range(len(seqs))), f"s{k}: history out of order or with gaps"
        missing = [(seq, at) for seq, at in acked[k] if seq >= len(seqs)]
        missing_total += len(missing)
        oldest = max((killed_at - at for _, at in missing), default=0.0)
        oldest_lost = max(oldest_lost, oldest)
        assert all(killed_at - at <= bound for _, at in missing), (
            f"s{k}: {len(missing)} acknowledged messages lost, the oldest acked "
            f"{oldest * 1000:.0f} ms before the kill (bound {bound * 1000:.0f} ms)")
    total = sum(len(a) for a in acked)
    rate = total / 1.5
    print(f"kill -9: {total} acknowledged messages ({rate:.0f}/s), {missing_total} lost "
          f"(at most {rate * bound:.0f} allowed), the oldest acked {oldest_lost * 1000:.0f} ms "
          f"before the kill; {len(created)} acknowledged creates all kept")
    assert total > 100, "the senders hardly sent anything"
    assert len(created) > 5


# --------------------------------------------------------------------- refusals


def test_two_servers_on_one_data_dir(make_server, tmp_path):
    first = make_server(rate_limit=0)
    code, output = serve_fails(tmp_path, "--data-dir", str(tmp_path / "data"))
    assert code == 1
    assert f"is in use by another process (pid {first.pid})" in output
    assert "Traceback" not in output
    assert first.proc.poll() is None  # the first one is untouched


def test_memory_store_does_not_lock_the_data_dir(make_server, login):
    make_server(rate_limit=0)
    other = make_server(rate_limit=0, store="memory")  # same --data-dir, nothing written
    login(other, "alice")


def test_unwritable_data_dir(tmp_path):
    # A path under a regular file: mkdir fails even for root (chmod would not stop root).
    (tmp_path / "afile").write_text("")
    code, output = serve_fails(tmp_path, "--data-dir", str(tmp_path / "afile" / "data"))
    assert code == 1
    assert output.strip().splitlines()[-1] == (
        f"error: cannot start: cannot use data directory {tmp_path / 'afile' / 'data'}: "
        "Not a directory")
    assert "Traceback" not in output


def test_garbage_database_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / DB_NAME).write_bytes(os.urandom(64 * 1024))
    code, output = serve_fails(tmp_path, "--data-dir", str(data))
    assert code == 1
    assert "file is not a database" in output and "chatsrv restore" in output
    assert "Traceback" not in output


def test_damaged_database_pages(make_server, login, tmp_path):
    server = make_server(rate_limit=0, history=5000)
    alice = login(server, "alice")
    for i in range(3000):
        alice.send(f"public General message {i} " + "x" * 100)
    alice.sync()
    server.stop(signal.SIGTERM)
    path = tmp_path / "data" / DB_NAME
    raw = bytearray(path.read_bytes())
    page = 4096
    assert len(raw) > 20 * page
    for offset in range(2 * page, len(raw), page):  # keep the header and the schema page
        raw[offset:offset + page] = os.urandom(page)
    path.write_bytes(bytes(raw))
    code, output = serve_fails(tmp_path, "--data-dir", str(tmp_path / "data"), "--history", "5000")
    assert code == 1
    assert "error: cannot start: " in output and "chatsrv restore" in output
    assert "Traceback" not in output


def test_newer_schema_is_refused(make_server, tmp_path):
    make_server(rate_limit=0).stop(signal.SIGTERM)
    db = sqlite3.connect(tmp_path / "data" / DB_NAME)
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    code, output = serve_fails(tmp_path, "--data-dir", str(tmp_path / "data"))
    assert code == 1
    assert f"schema version 99 is newer than this chatsrv understands ({schema_version()})" in output


# --------------------------------------------------------------------- backup, restore


def test_backup_while_running_and_restore(make_server, login, tmp_path):
    data = tmp_path / "data"
    server = make_server(rate_limit=0)
    alice = login(server, "alice")
    assert alice.request("create Before") == "ok: created group Before"
    for i in range(50):
        alice.send(f"public General before {i}")
    alice.sync()
    wait_for(lambda: stored_messages(data) == 50, "the 50 messages in the database")
    backup = tmp_path / "backups" / "chat.db"
    backup.parent.mkdir()
    done = chatsrv("backup", str(backup), "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"backup written to {backup}: 2 groups, 50 history messages")
    assert alice.request("ping") == "ok: pong"  # the server did not notice

    assert alice.request("create After") == "ok: created group After"
    refused = chatsrv("restore", str(backup), "--data-dir", str(data))
    assert refused.returncode == 1
    assert "in use by another process" in refused.stderr and "Traceback" not in refused.stderr
    server.stop(signal.SIGTERM)

    restored = chatsrv("restore", str(backup), "--data-dir", str(data))
    assert restored.returncode == 0, restored.stderr
    assert (data / (DB_NAME + ".pre-restore")).exists()
    again = make_server(rate_limit=0)
    bob = login(again, "bob")
    assert groups(bob) == ["Before", "General"]  # After came later than the backup
    assert [t for _, _, t in history(bob, "General", 3)] == [f"before {i}" for i in (47, 48, 49)]


def test_restore_replaces_a_corrupt_database(make_server, login, tmp_path):
    data = tmp_path / "data"
    server = make_server(rate_limit=0)
    login(server, "alice").request("create Dev")
    server.stop(signal.SIGTERM)
    assert chatsrv("backup", str(tmp_path / "b.db"), "--data-dir", str(data)).returncode == 0
    (data / DB_NAME).write_bytes(b"garbage" * 1000)
    restored = chatsrv("restore", str(tmp_path / "b.db"), "--data-dir", str(data))
    assert restored.returncode == 0, restored.stderr
    bob = login(make_server(rate_limit=0), "bob")
    assert groups(bob) == ["Dev", "General"]


def test_backup_and_restore_refuse_bad_paths(tmp_path):
    missing = chatsrv("backup", str(tmp_path / "b.db"), "--data-dir", str(tmp_path / "none"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"error: backup failed: no database at {tmp_path / 'none' / DB_NAME} (wrong --data-dir?)")
    (tmp_path / "junk.db").write_bytes(b"not sqlite" * 500)
    junk = chatsrv("restore", str(tmp_path / "junk.db"), "--data-dir", str(tmp_path / "d"))
    assert junk.returncode == 1 and "file is not a database" in junk.stderr
    assert not (tmp_path / "d" / DB_NAME).exists()


# --------------------------------------------------------------------- options


def test_store_options_in_help_and_environment(make_server, tmp_path):
    shown = subprocess.run(
        [sys.executable, "-m", "chatsrv", "serve", "--help"], capture_output=True, text=True,
        env=dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb"),
    )
    assert shown.returncode == 0
    for flag in ("--store", "--flush-ms", "CHATSRV_STORE", "CHATSRV_FLUSH_MS"):
        assert flag in shown.stdout, flag
    code, output = serve_fails(tmp_path, "--store", "postgres")
    assert code == 2 and "error: --store must be sqlite or memory" in output
    code, output = serve_fails(tmp_path, "--flush-ms", "0")
    assert code == 2 and "error: --flush-ms must be 1..60000" in output

    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSRV_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatsrv", "serve", "--port", "0", "--web-port", "0", "--http-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env=dict(env, CHATSRV_STORE="memory", CHATSRV_FLUSH_MS="20"))
    try:
        assert "store memory (nothing is kept across restarts)" in proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "chatsrv-data").exists()

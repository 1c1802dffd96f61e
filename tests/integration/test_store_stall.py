"""A store that stops answering, over real servers (PROTOCOL.md v2, "Limits").

Two ways to stall it:
- `locked_store`: another process holds SQLite's write lock (`BEGIN EXCLUSIVE`).
  The writer thread then waits in SQLite's busy handler (busy_timeout 5 s) and
  fails, again at every retry: no root needed, and the process can always exit.
- `frozen_disk` (root only): the data directory on a loop-mounted ext4 image
  frozen with `fsfreeze`. Writes block in the kernel until it is thawed, as on a
  dead disk: the only way to reach the 10 s create timeout for real.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Client
from test_persistence import groups

from chatsrv.store.sqlite import DB_NAME

LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


@contextlib.contextmanager
def locked_store(data_dir: Path):
    """Hold the database's write lock from another process until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(data_dir / DB_NAME)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def readyz(server) -> int:
    return server.api.call("GET", "/readyz", token=None)[0]


def stalled_gauge(server) -> str:
    return re.search(r"^chatsrv_store_stalled (\S+)$", server.api.metrics(), re.M).group(1)


def wait_for(predicate, timeout: float, tick=None) -> float:
    """Poll `predicate` (calling `tick` between polls); the seconds it took."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"not within {timeout} s"
        if tick is not None:
            tick()
        time.sleep(0.1)
    return time.monotonic() - started


def try_login(server, name: str) -> Client | None:
    client = Client(server.host, server.port)
    client.expect("enter a username:")
    client.send(name)
    if client.read_line() == f"connected! welcome {name}":
        client.expect("you joined the group General")
        return client
    client.close()
    return None


# --------------------------------------------------------------------- a locked database


def test_create_while_the_store_is_locked_fails_and_the_group_does_not_exist(
        make_server, login, tmp_path):
    server = make_server(rate_limit=0)
    alice = login(server, "alice")
    with locked_store(tmp_path / "data"):
        started = time.monotonic()
        assert alice.request("create Dev") == "error: group not created, storage failed: Dev"
        assert time.monotonic() - started < 11
        assert "Dev" not in groups(alice)
    assert alice.request("create Dev") == "ok: created group Dev"


def test_a_client_that_leaves_while_its_create_waits_frees_its_name_at_once(
        make_server, login, tmp_path):
    server = make_server(rate_limit=0)
    alice = login(server, "alice")
    with locked_store(tmp_path / "data"):
        alice.send("create Dev")
        alice.close()
        started = time.monotonic()
        again = None
        while again is None:  # the store answers only after 5 s; the name is free long before
            assert time.monotonic() - started < 2.5, "alice's name stayed taken"
            again = try_login(server, "alice")
        assert again.request("ping") == "ok: pong"
        again.close()
    assert "disconnect id=1 user=alice reason=eof" in server.log()


def test_sigterm_while_the_store_is_locked_exits_within_the_grace_period(
        make_server, login, tmp_path):
    server = make_server(rate_limit=0, shutdown_grace=1)
    alice = login(server, "alice")
    with locked_store(tmp_path / "data"):
        for i in range(20):
            alice.send(f"public General m{i}")
        alice.sync()
        wait_for(lambda: "history write failed" in server.log(), 15)
        server.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        server.proc.wait(1 + 10)
        spent = time.monotonic() - started
        assert server.proc.returncode == 0
    assert spent < 1 + 5, spent
    lost = re.search(r"(\d+) history messages lost", server.log())
    assert lost and int(lost.group(1)) >= 20, server.log()[-2000:]


def test_readyz_says_503_while_the_store_is_stuck_and_200_once_it_recovers(
        make_http_server, login, tmp_path):
    server = make_http_server(rate_limit=0)
    alice = login(server, "alice")
    n = iter(range(10**6))

    def post() -> None:  # the stall shows only while there is something to write
        alice.send(f"public General m{next(n)}")

    assert readyz(server) == 200 and float(stalled_gauge(server)) == 0
    with locked_store(tmp_path / "data"):
        wait_for(lambda: readyz(server) == 503, 15, post)
        assert float(stalled_gauge(server)) == 1
        assert server.api.call("GET", "/healthz", token=None)[0] == 200
        assert alice.request("ping") == "ok: pong"  # the loop still answers
    wait_for(lambda: readyz(server) == 200, 10, post)
    assert float(stalled_gauge(server)) == 0
    assert "store stalled:" in server.log()
    wait_for(lambda: "store recovered after" in server.log(), 3)


# --------------------------------------------------------------------- a frozen disk


@contextlib.contextmanager
def loop_mount(tmp_path: Path):
    """An ext4 image mounted at tmp_path/disk; skipped when we may not (see module doc)."""
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if os.geteuid() != 0 and not in_ci:
        pytest.skip("fsfreeze needs root (runs in CI, or as root)")
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["fsfreeze", "-u", str(mount)], capture_output=True)
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_create_on_a_frozen_disk_fails_after_10_s_and_a_late_commit_is_undone(
        make_http_server, login, tmp_path):
    with loop_mount(tmp_path) as disk:
        data_dir = disk / "data"
        server = make_http_server(rate_limit=0, data_dir=data_dir, shutdown_grace=1)
        try:
            alice = login(server, "alice")
            subprocess.run(["fsfreeze", "-f", str(disk)], check=True)
            started = time.monotonic()
            alice.send("create Dev")
            wait_for(lambda: readyz(server) == 503, 8)
            assert alice.read_line() == "error: group not created, storage failed: Dev"
            assert 9.5 < time.monotonic() - started < 12
            assert "Dev" not in groups(alice)
            subprocess.run(["fsfreeze", "-u", str(disk)], check=True)
            wait_for(lambda: "Dev committed" in server.log(), 10)
            assert "deleted again" in server.log()
            wait_for(lambda: readyz(server) == 200, 5)
            assert "Dev" not in groups(alice)
            assert server.stop(signal.SIGTERM) == 0
            again = make_http_server(rate_limit=0, data_dir=data_dir)
            assert "Dev" not in groups(login(again, "bob"))
            again.stop(signal.SIGTERM)
        finally:
            subprocess.run(["fsfreeze", "-u", str(disk)], capture_output=True)
            server.stop(signal.SIGKILL)

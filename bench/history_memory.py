"""History memory: RSS of a server whose groups are all busy, the cost of `public`,
and the per-entry overhead behind `hub.ENTRY_OVERHEAD`.

    python -m bench.history_memory rss [--src DIR] [--seconds 60] [-- serve options]
    python -m bench.history_memory hotpath [--old DIR]
    python -m bench.history_memory overhead

`rss`: a server (the code under --src, default this checkout; e.g. an old
commit unpacked with `git archive`) with the default `--history 1000` and
`--history-memory`, and 20 connections posting 4 KB messages round-robin to 200
groups, each paced at 100 messages/s (the default rate limit); the server's RSS
is printed every second. Each connection is the only member of its 10 groups,
so the figure is history, not fan-out.

`hotpath`: `Hub.handle` of a `public` line in-process (10 members, 100-byte
text), medians of 200 batches of 500, alternating between this code, the
version in DIR/chatsrv_old (`--old`), and this code with a budget so small that
every message evicts an entry.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .procstat import rss_bytes

GROUPS = 200
CONNECTIONS = 20
RATE = 100  # messages per second per connection
TEXT = "x" * 4000


def rss(src: Path, seconds: int, extra: list[str]) -> None:
    data = tempfile.mkdtemp(prefix="histmem-")
    env = dict(os.environ, PYTHONPATH=str(src))
    env = {k: v for k, v in env.items() if not k.startswith("CHATSRV_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatsrv", "serve", "--port", "0", "--http-port", "0",
         "--rate-limit", "0", "--data-dir", data, *extra],
        stderr=subprocess.PIPE, text=True, env=env, cwd=data)  # cwd: not this checkout
    port = None
    while port is None:
        line = proc.stderr.readline()
        match = re.search(r"listening on \S+:(\d+)", line)
        if match:
            port = int(match.group(1))
        elif not line:
            raise SystemExit("server did not start")
    socks = []
    for c in range(CONNECTIONS):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"u{c}\n".encode())
        mine = [f"g{g}" for g in range(c, GROUPS, CONNECTIONS)]
        sock.sendall("".join(f"create {g}\njoin {g}\n" for g in mine).encode())
        socks.append((sock, mine))
    drain(socks, 5.0)
    started = time.monotonic()
    sent, i = 0, 0
    print(f"# {src}: {extra or 'defaults'}: 20 connections x {RATE}/s x 4 KB to {GROUPS} groups for {seconds} s")
    next_sample = started + 1
    while time.monotonic() - started < seconds:
        tick = time.monotonic()
        for sock, mine in socks:  # 1/10 s worth of messages per connection
            burst = "".join(f"public {mine[(i + k) % len(mine)]} {TEXT}\n"
                            for k in range(RATE // 10))
            sock.sendall(burst.encode())
            sent += RATE // 10
        i += RATE // 10
        drain(socks, 0.0)
        if time.monotonic() >= next_sample:
            print(f"{time.monotonic() - started:5.0f} s  rss {rss_bytes(proc.pid) / 2**20:7.1f} MiB"
                  f"  sent {sent}", flush=True)
            next_sample += 1
        time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    proc.terminate()
    proc.wait(60)


def drain(socks, wait: float) -> None:
    """Read whatever the server sent (replies), so nothing backs up."""
    deadline = time.monotonic() + wait
    while True:
        for sock, _ in socks:
            sock.setblocking(False)
            try:
                while sock.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
        if time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def hotpath(old: Path | None) -> None:
    """Medians of alternating batches, this code and (with --old) another version
    imported under another name, in one process: the machine's noise hits both."""
    import importlib

    versions = {"new": importlib.import_module("chatsrv.core.hub")}
    if old is not None:
        sys.path.insert(0, str(old))
        versions["old"] = importlib.import_module("chatsrv_old.hub")
    cases = {name: make_case(mod) for name, mod in versions.items()}
    cases["new, evicting every message"] = make_case(versions["new"], history_memory=64 << 10)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(200):
        for name, case in cases.items():
            times[name].append(case())
    for name, samples in times.items():
        print(f"public, 10 members, 100 B, {name}: median {statistics.median(samples):.0f} ns")


def make_case(hubmod, **budget):
    hub = hubmod.Hub(clock=time.time, history=1000, **budget)
    users = [hub.login(f"u{i}") for i in range(10)]
    line = "public General " + "y" * 100
    handle, alice = hub.handle, users[0]

    def batch() -> float:
        for user in users:
            user.queue.clear()
        hub.dirty.clear()
        started = time.perf_counter()
        for _ in range(500):
            handle(alice, line)
        return (time.perf_counter() - started) / 500 * 1e9

    return batch


def overhead() -> None:
    """Bytes per history entry beyond its text, as tracemalloc sees them."""
    import tracemalloc
    from collections import deque

    n = 100_000
    texts = [f"{i:08d}" + "x" * 92 for i in range(n)]
    senders = [f"user{i}" for i in range(n)]
    for shared in (True, False):
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        ring, order = deque(), deque()
        for i in range(n):
            ring.append((time.time(), "alice" if shared else "".join(["u", senders[i]]),
                         texts[i]))
            order.append(ring)
        per = (tracemalloc.get_traced_memory()[0] - before) / n
        tracemalloc.stop()
        print(f"sender {'shared' if shared else 'own string'}: {per:.0f} bytes per entry "
              "beyond its text")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("rss", "hotpath", "overhead"))
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--old", type=Path, default=None,
                        help="hotpath: a directory holding another version as package "
                        "chatsrv_old (e.g. git archive OLD chatsrv, renamed)")
    args, extra = parser.parse_known_args()
    if args.what == "rss":
        rss(args.src, args.seconds, [a for a in extra if a != "--"])
    elif args.what == "hotpath":
        hotpath(args.old)
    else:
        overhead()


if __name__ == "__main__":
    main()

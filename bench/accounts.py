"""The `logins` workload: password and token logins to accounts (PROTOCOL.md v2).

The fresh server runs `--accounts required`; before it starts, its data
directory gets N accounts (one argon2id hash of today's parameters, shared: the
cost of a verification does not depend on the salt) and a known token key, so
the driver mints the tokens itself with the server's own code (the `token`
command would give the same strings). Then:

- password: N logins with the one-line `name password` form, `--conc` at a time;
- token: M logins with tokens instead, `--conc` at a time;

and during each phase a probe (an account logged in before the phase) sends
`ping` every PROBE_EVERY_S and records its round trips: the worst one is the
loop stall the contract bounds (no client waits more than 20 ms while 50
password logins are checked).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from bench.clients import Pool, Step
from bench.report import percentile
from bench.server import Server, Target

PROMPT = b"enter a username:"
LOGGED_IN = b"you joined the group General"
PASSWORD = "bench-password-1"
TOKEN_KEY = bytes(range(32))
PROBE_EVERY_S = 0.005


def seed(data_dir: str, names: list[str]) -> list:
    """Put the accounts (and the token key) in a fresh data directory; returns them."""
    from chatsrv import passwords
    from chatsrv.core.accounts import Account
    from chatsrv.store.sqlite import SqliteStore

    store = SqliteStore(Path(data_dir))
    store.load(0)
    phc = passwords.hash_password(PASSWORD)
    now = time.time()
    accounts = [Account(name, phc, now) for name in names]
    for account in accounts:
        store.add_account(account)
    store.token_key(TOKEN_KEY)
    store.close()
    return accounts


class Probe(threading.Thread):
    """A logged-in client pinging every PROBE_EVERY_S; `worst` is its slowest round trip."""

    def __init__(self, addr: tuple[str, int], name: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(addr, timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._read_until(PROMPT)
        self.sock.sendall(f"{name} {PASSWORD}\n".encode())
        self._read_until(LOGGED_IN)
        self.rtts: list[float] = []
        self.stopping = threading.Event()

    def _read_until(self, wanted: bytes) -> None:
        buf = b""
        while wanted not in buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the probe")
            buf += data

    def run(self) -> None:
        while not self.stopping.is_set():
            t0 = time.monotonic()
            self.sock.sendall(b"ping\n")
            self._read_until(b"ok: pong")
            self.rtts.append(time.monotonic() - t0)
            time.sleep(PROBE_EVERY_S)

    def stop(self) -> list[float]:
        self.stopping.set()
        self.join(5)
        self.sock.close()
        return sorted(self.rtts)


def _phase(addr, lines: list[str], conc: int, probe_name: str) -> dict:
    probe = Probe(addr, probe_name)
    probe.start()
    pool = Pool(addr)
    try:
        t0 = time.monotonic()
        steps = ([Step(None, (PROMPT,)), Step(line.encode() + b"\n", (LOGGED_IN,))]
                 for line in lines)
        conns = pool.login_many(steps, conc)
    finally:
        pool.close()
        rtts = probe.stop()
    ok = [c for c in conns if not c.error]
    lat = sorted(c.done_at - c.started for c in ok)
    out = {"logins": len(lines), "ok": len(ok), "failed": len(conns) - len(ok)}
    if len(ok) < len(conns):
        out["error"] = next(c.error for c in conns if c.error)
    if ok:
        out["per_s"] = round(len(ok) / (max(c.done_at for c in ok) - t0), 1)
    out["p50_ms"] = percentile(lat, 0.50, 1e3)
    out["p99_ms"] = percentile(lat, 0.99, 1e3)
    out["probe_pings"] = len(rtts)
    out["probe_p50_ms"] = percentile(rtts, 0.50, 1e3)
    out["probe_worst_ms"] = percentile(rtts, 1.0, 1e3)
    return out


def run_logins(server: Server, cpus, n_password: int, n_token: int, conc: int) -> dict:
    """`server` is not started yet: its data directory is seeded, then it starts."""
    from chatsrv.core.accounts import mint_token

    names = [f"acct{i:05d}" for i in range(max(n_password, n_token))]
    accounts = seed(os.path.join(server.dir, "data"), [*names, "probe0", "probe1"])
    server.start()
    meter = Target(server.addr, server.pid, cpus).meter()
    password = _phase(server.addr, [f"{n} {PASSWORD}" for n in names[:n_password]], conc,
                      "probe0")
    now = time.time()
    # The driver mints what `token` would answer: the server's code, key and accounts.
    token_lines = [f"{a.name} {mint_token(TOKEN_KEY, a, now, 3600)}" for a in accounts[:n_token]]
    token = _phase(server.addr, token_lines, conc, "probe1")
    out: dict = {"password": password, "token": token, "concurrency": conc}
    out.update(meter.stop())
    for phase in (password, token):
        if phase.get("error"):
            out["error"] = phase["error"]
    return out

"""`make soak`: a long, bounded run looking for leaks and lost messages.

Runs a fresh server (SQLite store, the shipped defaults but for a short login
timeout) for SOAK_S seconds (default 300) under a mixed load, all from one
gevent process:

- steady chatters: logged in the whole run, members of group `soak`, each
  posting a numbered public message every few hundred ms and reading all the time;
- churners: connect, log in, join `soak`, post a few messages and a private one
  to a steady chatter, confirm with `ping`, then `exit`, or drop the connection
  (FIN or RST), or just leave the group first; then again with a new name;
- lurkers: connect and never log in (the login timeout closes them);
- a flooder on its own address (127.0.0.9; the others use 127.0.0.1, the only
  exempt address here) opening more connections than `--max-per-ip` allows.

At the end everyone leaves and it checks, printing the figures:
- RSS growth from minute 1 (or a fifth of the run if shorter) to the end of
  the load is under 10 %;
- the server's open FDs return to their count before the first client;
- zero lost deliveries: every message a live reader should have got (each
  steady chatter's and each churner message confirmed by its sender's `pong`)
  arrived, once, in order per sender;
- zero server errors in the log (ERROR lines, tracebacks), and the server
  exits 0 on SIGTERM.
Exit status 1 if any check fails.
"""

from __future__ import annotations

import gevent.monkey

gevent.monkey.patch_all()

import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from bench.procstat import metric_value, rss_bytes  # noqa: E402

SOAK_S = float(os.environ.get("SOAK_S", "300"))
STEADY = int(os.environ.get("SOAK_STEADY", "20"))
CHURNERS = int(os.environ.get("SOAK_CHURNERS", "12"))
POST_EVERY_S = 0.25
MAX_PER_IP = 10
LOGIN_TIMEOUT = 3
RSS_LIMIT = 0.10
# SOAK_STORE=memory takes SQLite's page cache (it grows to 2 MiB as the file does) out
# of the RSS figures.
GROUP = "soak"
CLIENT_ADDR = "127.0.0.1"
FLOOD_ADDR = "127.0.0.9"
LISTENING = re.compile(r"listening on \S+:(\d+)")
HTTP_ON = re.compile(r"http on (http://\S+:\d+)")


class Line:
    """A line client over a gevent socket."""

    def __init__(self, port: int, source: str = CLIENT_ADDR, timeout: float = 20) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.buf = b""

    def send(self, line: str) -> None:
        self.sock.sendall((line + "\n").encode())

    def read(self) -> str:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def until(self, want: str, on_line=None) -> None:
        while True:
            line = self.read()
            if line == want:
                return
            if on_line is not None:
                on_line(line)

    def login(self, name: str) -> None:
        self.until("enter a username:")
        self.send(name)
        self.until("you joined the group General")

    def close(self, reset: bool = False) -> None:
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.sock.close()


class Ledger:
    """Who must receive what, and what they did receive."""

    def __init__(self) -> None:
        self.confirmed: list[tuple[str, int, float]] = []  # (sender, seq, confirmed at)
        self.received: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        self.private_confirmed: list[tuple[str, str, int]] = []  # (sender, to, seq)
        self.private_received: dict[str, set] = defaultdict(set)
        self.sent = 0
        self.sessions = 0
        self.drops = 0
        self.errors: list[str] = []


MSG = re.compile(r"\[public group soak from (\S+)\] m (\d+)$")
PRIV = re.compile(r"\[private from (\S+)\] p (\d+)$")


class Steady:
    def __init__(self, port: int, name: str, ledger: Ledger) -> None:
        self.name, self.ledger = name, ledger
        self.conn = Line(port)
        self.conn.login(name)
        self.seq = 0
        self.joined_at = 0.0
        self.pongs = 0
        self.waiting = gevent.event.Event()
        self.leaving = False

    def join(self) -> None:
        self.conn.send(f"join {GROUP}")
        self.conn.until(f"ok: joined group {GROUP}")
        self.joined_at = time.monotonic()

    def on_line(self, line: str) -> None:
        m = MSG.match(line)
        if m:
            self.ledger.received[self.name][m.group(1)].append(int(m.group(2)))
            return
        m = PRIV.match(line)
        if m:
            self.ledger.private_received[self.name].add((m.group(1), int(m.group(2))))
            return
        if line == "ok: pong":
            self.pongs += 1
            self.waiting.set()
        elif line.startswith("error: ") or line.startswith("* disconnected"):
            self.ledger.errors.append(f"{self.name} got {line!r}")

    def reader(self) -> None:
        try:
            while True:
                self.on_line(self.conn.read())
        except (EOFError, OSError) as err:
            if not self.leaving:
                self.ledger.errors.append(f"steady {self.name} lost its connection: {err!r}")

    def poster(self, until: float) -> None:
        while time.monotonic() < until:
            self.conn.send(f"public {GROUP} m {self.seq}")
            self.seq += 1
            self.ledger.sent += 1
            gevent.sleep(POST_EVERY_S * random.uniform(0.5, 1.5))

    def sync(self) -> None:
        """Every line the server produced for us before this has arrived."""
        self.waiting.clear()
        self.conn.send("ping")
        self.waiting.wait(30)


def churner(port: int, idx: int, until: float, ledger: Ledger, steady_names: list[str]) -> None:
    n = 0
    rng = random.Random(idx)
    while time.monotonic() < until:
        n += 1
        name = f"c{idx}x{n}"
        try:
            conn = Line(port)
            conn.login(name)
            ledger.sessions += 1
            conn.send(f"join {GROUP}")
            conn.until(f"ok: joined group {GROUP}")
            seqs = list(range(rng.randint(1, 5)))
            for seq in seqs:
                conn.send(f"public {GROUP} m {seq}")
            to = rng.choice(steady_names)
            conn.send(f"private {to} p {n}")
            conn.send("ping")
            conn.until("ok: pong")  # all of the above was handled: it must arrive
            now = time.monotonic()
            ledger.confirmed += [(name, s, now) for s in seqs]
            ledger.private_confirmed.append((name, to, n))
            ledger.sent += len(seqs) + 1
            gevent.sleep(rng.uniform(0, 0.3))
            ending = rng.random()
            if ending < 0.4:
                conn.send("exit")
                conn.until("ok: bye")
                conn.close()
            elif ending < 0.6:
                conn.send(f"leave {GROUP}")
                conn.until(f"ok: left group {GROUP}")
                conn.close()
            else:
                ledger.drops += 1
                conn.close(reset=ending < 0.8)
        except (EOFError, OSError) as err:
            ledger.errors.append(f"churner {name}: {err!r}")
        gevent.sleep(rng.uniform(0, 0.2))


def lurker(port: int, until: float, ledger: Ledger) -> None:
    while time.monotonic() < until:
        try:
            conn = Line(port)
            conn.until("enter a username:")
            conn.until("error: login timeout")  # after LOGIN_TIMEOUT s of silence
            conn.close()
        except (EOFError, OSError) as err:
            ledger.errors.append(f"lurker: {err!r}")


def flooder(port: int, until: float, counts: dict) -> None:
    while time.monotonic() < until:
        held = []
        for _ in range(MAX_PER_IP * 3):
            try:
                conn = Line(port, source=FLOOD_ADDR)
                line = conn.read()
            except (EOFError, OSError):
                counts["failed"] += 1
                continue
            counts[line] += 1
            held.append(conn)
        gevent.sleep(1)
        for conn in held:
            conn.close()
        gevent.sleep(4)


# ---------------------------------------------------------------- the server


class Server:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="chatsrv-soak-")
        self.log_path = os.path.join(self.dir, "server.log")
        port = free_port()
        args = [sys.executable, "-m", "chatsrv", "serve", "--port", "0",
                "--http-port", str(port), "--data-dir", os.path.join(self.dir, "data"),
                "--login-timeout", str(LOGIN_TIMEOUT), "--exempt", f"{CLIENT_ADDR}/32",
                "--max-per-ip", str(MAX_PER_IP), "--store", os.environ.get("SOAK_STORE", "sqlite")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSRV_")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while True:
            text = self.log()
            m, h = LISTENING.search(text), HTTP_ON.search(text)
            if m and h:
                self.port, self.http = int(m.group(1)), h.group(1)
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{text}")
            time.sleep(0.05)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def rss_kb(self) -> int:
        rss = rss_bytes(self.proc.pid)
        if rss is None:
            raise RuntimeError(f"server {self.proc.pid} is gone")
        return rss // 1024

    def fds(self) -> int:
        return len(self.fd_targets())

    def fd_targets(self) -> list[str]:
        folder = f"/proc/{self.proc.pid}/fd"
        targets = []
        for fd in os.listdir(folder):
            try:
                targets.append(os.readlink(f"{folder}/{fd}"))
            except OSError:  # closed meanwhile
                pass
        return sorted(targets)

    def metric(self, name: str, **labels) -> float:
        return metric_value(self.http, name, **labels)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the run


def main() -> int:
    server = Server()
    try:
        return run(server)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def run(server: Server) -> int:
    gevent.sleep(0.5)
    fds_at_start = server.fd_targets()
    fds_before = len(fds_at_start)
    ledger = Ledger()
    started = time.monotonic()
    until = started + SOAK_S
    warmup = min(60.0, SOAK_S / 5)
    print(f"soak: {SOAK_S:g} s, {STEADY} steady chatters, {CHURNERS} churners, lurkers, "
          f"a flooder; server pid {server.proc.pid}, log {server.log_path}", flush=True)

    steadies = [Steady(server.port, f"s{i}", ledger) for i in range(STEADY)]
    steadies[0].conn.send(f"create {GROUP}")
    steadies[0].conn.until(f"ok: created group {GROUP}")
    for s in steadies:
        s.join()
    names = [s.name for s in steadies]
    readers = [gevent.spawn(s.reader) for s in steadies]
    flood_counts: dict = defaultdict(int)
    workers = [gevent.spawn(s.poster, until) for s in steadies]
    workers += [gevent.spawn(churner, server.port, i, until, ledger, names)
                for i in range(CHURNERS)]
    workers += [gevent.spawn(lurker, server.port, until, ledger) for _ in range(3)]
    workers.append(gevent.spawn(flooder, server.port, until, flood_counts))

    samples: list[tuple[float, int, int]] = []
    rss_warm = None
    while time.monotonic() < until:
        gevent.sleep(min(5.0, max(0.0, until - time.monotonic())))
        t = time.monotonic() - started
        samples.append((t, server.rss_kb(), server.fds()))
        if rss_warm is None and t >= warmup:
            rss_warm = samples[-1][1]
        if len(samples) % 12 == 0:
            print(f"  t={t:5.0f} s  rss={samples[-1][1] / 1024:.1f} MiB  fds={samples[-1][2]}  "
                  f"sessions={ledger.sessions}  sent={ledger.sent}", flush=True)
    gevent.joinall(workers, timeout=LOGIN_TIMEOUT + 30)
    rss_end = server.rss_kb()
    for s in steadies:  # every message posted has been fanned out ...
        s.sync()
    for s in steadies:  # ... and has reached every reader
        s.sync()
    users_peak = ledger.sessions
    rejected = {r: server.metric("chatsrv_connections_rejected_total", reason=r)
                for r in ("per_ip", "rate", "unauth", "full")}
    timeouts = server.metric("chatsrv_disconnects_total", reason="timeout")
    full_gcs = server.metric("python_gc_collections_total", generation="2")
    for s in steadies:
        s.leaving = True
        s.conn.send("exit")
    gevent.joinall(readers, timeout=30)
    for s in steadies:
        s.conn.close()

    # FDs and per-address state back to the start once everyone has left.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and server.metric("chatsrv_connections_active"):
        time.sleep(0.2)
    addresses = server.metric("chatsrv_limited_addresses")
    # No HTTP request from here on: its own socket would be counted.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and server.fds() > fds_before:
        time.sleep(0.1)
    fds_left = server.fd_targets()
    fds_after = len(fds_left)
    lost, dupes = check_deliveries(ledger, steadies)
    code = server.stop()
    log = server.log()
    errors = [line for line in log.splitlines()
              if " ERROR " in line or "Traceback" in line or "server error" in line]

    growth = (rss_end - rss_warm) / rss_warm if rss_warm else float("nan")
    elapsed = time.monotonic() - started
    print(f"\nsoak finished after {elapsed:.0f} s of which {SOAK_S:g} s of load")
    print(f"  sessions (churn):       {users_peak} logins, {ledger.drops} dropped without exit")
    print(f"  messages sent:          {ledger.sent}")
    print(f"  deliveries checked:     {sum(len(v) for r in ledger.received.values() for v in r.values())}"
          f" public + {len(ledger.private_confirmed)} private")
    print(f"  refused (per_ip, rate, unauth, full): {rejected['per_ip']:.0f}, "
          f"{rejected['rate']:.0f}, {rejected['unauth']:.0f}, {rejected['full']:.0f}; "
          f"flooder saw {dict(flood_counts)}")
    print(f"  login timeouts:         {timeouts:.0f}")
    print(f"  RSS at {warmup:.0f} s:            {rss_warm / 1024:.1f} MiB; at the end "
          f"{rss_end / 1024:.1f} MiB; growth {growth * 100:+.1f} % (limit {RSS_LIMIT * 100:.0f} %)")
    print("  RSS samples (MiB):      " + " ".join(f"{r / 1024:.1f}" for _, r, _ in samples[::6]))
    print(f"  full GC collections:    {full_gcs:.0f} (the server sets high GC thresholds: "
          "cyclic garbage waits for these)")
    print(f"  open FDs:               {fds_before} before, peak "
          f"{max(f for _, _, f in samples)}, {fds_after} after everyone left")
    print(f"  per-address entries:    {addresses:.0f} after everyone left")
    print(f"  lost deliveries:        {lost}  (duplicated or out of order: {dupes})")
    print(f"  server errors in log:   {len(errors)}; exit status {code}")
    print(f"  client-side problems:   {len(ledger.errors)}")
    for problem in ledger.errors[:10]:
        print(f"    {problem}")

    checks = {
        "RSS growth under 10 %": growth < RSS_LIMIT,
        "FDs back to baseline": fds_after <= fds_before,
        "no per-address state left": addresses == 0,
        "zero lost deliveries": lost == 0 and dupes == 0,
        "zero server errors": not errors and code == 0,
        "no client-side problems": not ledger.errors,
        "the flooder was limited": rejected["per_ip"] > 0,
    }
    for what, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {what}")
    for line in errors[:10]:
        print(f"    {line}")
    if fds_after > fds_before:
        print(f"    FDs at the start: {fds_at_start}\n    FDs left: {fds_left}")
    if all(checks.values()):
        shutil.rmtree(server.dir, ignore_errors=True)
        return 0
    print(f"  server log kept: {server.log_path}")
    return 1


def check_deliveries(ledger: Ledger, steadies: list[Steady]) -> tuple[int, int]:
    """(lost, duplicated or out of order) over every delivery a live reader was owed."""
    lost = dupes = 0
    sent_by = {s.name: s.seq for s in steadies}
    churn_owed: dict[str, list[int]] = defaultdict(list)
    for sender, seq, _ in ledger.confirmed:
        churn_owed[sender].append(seq)
    for reader in steadies:
        got = ledger.received[reader.name]
        for sender, n in sent_by.items():
            if sender == reader.name:
                continue
            seqs = got.get(sender, [])
            lost += len(set(range(n)) - set(seqs))
            dupes += len(seqs) - len(set(seqs)) + (seqs != sorted(seqs))
        for sender, owed in churn_owed.items():
            seqs = got.get(sender, [])
            lost += len(set(owed) - set(seqs))
            dupes += len(seqs) - len(set(seqs))
            if seqs != sorted(seqs):
                dupes += 1
    for sender, to, seq in ledger.private_confirmed:
        if (sender, seq) not in ledger.private_received[to]:
            lost += 1
    return lost, dupes


if __name__ == "__main__":
    sys.exit(main())

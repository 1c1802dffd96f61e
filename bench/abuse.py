"""One client against everyone else: the figures of the issue "One client cannot
hurt anyone else", measured on whatever server `--pythonpath` selects (so the
old code can be measured on the same machine: `git archive` a commit elsewhere
and point --pythonpath at it).

    .venv/bin/python -m bench.abuse [--groups 10000] [--name-len 11|32] [--pythonpath DIR]

Prints: the `groups` line size; the worst and median `ping` round trip of a
bystander while another client sends 200 `groups` in one burst; /healthz
latency (median, max over 20 requests) while 64 and 200 half-sent HTTP
requests are held open (a request that gets no answer in 10 s counts as 10 s).
"""

from __future__ import annotations

import argparse
import os
import re
import site
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.server import free_port

HALF = b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: slow"


class Line:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buf = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def until(self, want: bytes) -> bytes:
        while True:
            line = self.line()
            if line.startswith(want):
                return line


def start(pythonpath: str | None, data: str, http_port: int) -> tuple[subprocess.Popen, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSRV_")}
    python = [sys.executable]
    if pythonpath:  # -S: the editable install's import hook would win over PYTHONPATH
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, *site.getsitepackages()])
        python.append("-S")
    args = [*python, "-m", "chatsrv", "serve", "--port", "0", "--store", "memory",
            "--rate-limit", "0", "--http-port", str(http_port), "--data-dir", data]
    log = Path(data) / "server.log"
    Path(data).mkdir(parents=True, exist_ok=True)
    # `-m` puts the working directory first on sys.path: run from the tree itself,
    # or this checkout's chatsrv would be the one measured.
    cwd = pythonpath or None
    proc = subprocess.Popen(args + ["--create-rate", "0"] if _knows_rate(python, env, cwd) else args,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=cwd)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"listening on \S+:(\d+)", log.read_text())
        if match:
            return proc, int(match.group(1))
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"server did not start:\n{log.read_text()}")


def _knows_rate(python: list[str], env: dict, cwd: str | None) -> bool:
    out = subprocess.run([*python, "-m", "chatsrv", "serve", "--help"], env=env, cwd=cwd,
                         capture_output=True, text=True).stdout
    return "--create-rate" in out


def burst(port: int, groups: int, name_len: int) -> None:
    maker = Line(port)
    maker.until(b"enter a username:")
    maker.send("maker\n")
    maker.until(b"you joined")
    names = [f"group-{i:05d}".ljust(name_len, "x") for i in range(groups - 1)]
    for i in range(0, len(names), 1000):
        maker.send("".join(f"create {n}\n" for n in names[i:i + 1000]))
        maker.until(f"ok: created group {names[min(i + 999, len(names) - 1)]}".encode())
    maker.send("groups\n")
    size = len(maker.until(b"groups: ")) + 1
    print(f"groups line at {groups} groups of {name_len}-character names: {size:,} bytes")
    hog, bystander = Line(port), Line(port)
    for client, name in ((hog, "hog"), (bystander, "bystander")):
        client.until(b"enter a username:")
        client.send(f"{name}\n")
        client.until(b"you joined")
    bystander.send("ping\n")
    bystander.until(b"ok: pong")
    hog.send("groups\n" * 200)
    delays, started = [], time.monotonic()
    while time.monotonic() - started < 8.0:
        sent = time.monotonic()
        bystander.send("ping\n")
        bystander.until(b"ok: pong")
        delays.append(time.monotonic() - sent)
    print(f"bystander ping while 200 groups in a burst: worst {max(delays) * 1000:.1f} ms, "
          f"median {statistics.median(delays) * 1000:.2f} ms over {len(delays)} pings")


def healthz(http_port: int, held: int) -> None:
    socks = []
    for _ in range(held):
        try:  # a server whose pool is full may not even accept (the old code)
            sock = socket.create_connection(("127.0.0.1", http_port), timeout=2)
        except OSError:
            continue
        sock.sendall(HALF)
        socks.append(sock)
    time.sleep(1.0)  # let the server accept them all before the first probe
    times = []
    for _ in range(20):
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10):
                pass
            times.append(time.monotonic() - started)
        except OSError:
            times.append(10.0)
            break  # starved: one timeout says it
    print(f"/healthz with {held} half-sent requests held ({len(socks)} connected): median "
          f"{statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms "
          f"({len(times)} requests)")
    for sock in socks:
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=10000)
    parser.add_argument("--name-len", type=int, default=11)
    parser.add_argument("--pythonpath", default=None)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        http_port = free_port()
        proc, port = start(opts.pythonpath, data, http_port)
        try:
            burst(port, opts.groups, opts.name_len)
            for held in (64, 200):
                healthz(http_port, held)
                time.sleep(0.5)
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()

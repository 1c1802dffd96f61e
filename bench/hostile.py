"""What one hostile client costs everyone else: `python -m bench.hostile [--tree DIR]`.

Two attacks of the issue "One client cannot hurt anyone else", each against a
fresh server (`--store memory`, the chat port and HTTP on free ports), while a
logged-in bystander pings every 20 ms:

- amplification: General holds 200 messages of 4,000 bytes; 20 connections
  each send `history General 200` 200 times in one write and never read;
- prompt: 2 connections pour invalid names at the username prompt for 5 s
  (reading and dropping the replies, so sendq does not end them), with the
  default rate limit and with `--rate-limit 0`.

Printed per attack: the server's peak RSS (sampled every 20 ms), its RSS when
the attack is over, the bystander's worst and median ping round trip, and the
pings that got no answer within 30 s. `--tree DIR` runs the server from another
source tree (e.g. a worktree of an older commit) for a same-run comparison.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from bench.procstat import rss_bytes

MESSAGE = "m" * 4000


class Server:
    def __init__(self, tree: str | None, *extra: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="chatsrv-hostile-")
        args = [sys.executable, "-m", "chatsrv", "serve", "--port", "0", "--http-port", "0",
                "--store", "memory", "--data-dir", os.path.join(self.dir, "data"), *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSRV_")}
        if tree:
            env["PYTHONPATH"] = tree
        self.log = os.path.join(self.dir, "server.log")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         cwd=tree or None)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = open(self.log, errors="replace").read()
            if "listening on" in text:
                self.port = int(text.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
                return
            time.sleep(0.05)
        raise SystemExit(f"server did not start: {open(self.log).read()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def login(port: int, name: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(name.encode() + b"\n")
    buf = b""
    while b"you joined the group General\n" not in buf:
        buf += sock.recv(65536)
    return sock


class Watch:
    """The bystander's pings and the server's RSS, sampled until stopped."""

    def __init__(self, port: int, pid: int) -> None:
        self.pid = pid
        self.sock = login(port, "bystander")
        self.rtts: list[float] = []
        self.lost = 0
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        buf = b""
        while not self.done.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid) or 0)
            started = time.monotonic()
            try:
                self.sock.sendall(b"ping\n")
                while b"ok: pong\n" not in buf:
                    buf += self.sock.recv(65536)
            except OSError:
                self.lost += 1
                return
            buf = buf.split(b"ok: pong\n", 1)[1]
            self.rtts.append(time.monotonic() - started)
            time.sleep(0.02)

    def stop(self) -> dict:
        self.done.set()
        self.thread.join()
        self.sock.close()
        rtts = sorted(self.rtts) or [float("nan")]
        return {"peak_mb": self.peak / 1e6, "after_mb": (rss_bytes(self.pid) or 0) / 1e6,
                "ping_worst_ms": rtts[-1] * 1000, "ping_median_ms": statistics.median(rtts) * 1000,
                "pings": len(self.rtts), "lost": self.lost}


def amplification(tree: str | None) -> dict:
    server = Server(tree, "--rate-limit", "0")
    try:
        writer = login(server.port, "writer")
        for _ in range(200):
            writer.sendall(f"public General {MESSAGE}\n".encode())
        writer.sendall(b"ping\n")
        buf = b""
        while b"ok: pong" not in buf:
            buf += writer.recv(65536)
        base = rss_bytes(server.proc.pid) or 0
        watch = Watch(server.port, server.proc.pid)
        hostile = [login(server.port, f"h{i}") for i in range(20)]
        for sock in hostile:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"history General 200\n" * 200)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until every hostile session is gone
            alive = 0
            for sock in hostile:
                sock.setblocking(False)
                try:
                    while sock.recv(1 << 20):
                        pass
                except BlockingIOError:
                    alive += 1
                except OSError:
                    pass
            if not alive:
                break
            time.sleep(0.5)
        time.sleep(1)
        result = watch.stop()
        result["before_mb"] = base / 1e6
        for sock in hostile:
            sock.close()
        return result
    finally:
        server.stop()


def prompt_flood(tree: str | None, rate_limit: str) -> dict:
    server = Server(tree, "--rate-limit", rate_limit)
    try:
        base = rss_bytes(server.proc.pid) or 0
        watch = Watch(server.port, server.proc.pid)
        stop = threading.Event()
        sent = [0]

        def flood() -> None:
            sock = socket.create_connection(("127.0.0.1", server.port))
            threading.Thread(target=_drain, args=(sock,), daemon=True).start()
            chunk = b"!bad name!\n" * 20000
            sock.settimeout(0.2)
            while not stop.is_set():
                try:
                    sent[0] += sock.send(chunk)
                except TimeoutError:
                    continue
                except OSError:
                    break
            sock.close()

        threads = [threading.Thread(target=flood) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(5)
        stop.set()
        for thread in threads:
            thread.join()
        time.sleep(0.5)
        result = watch.stop()
        result["before_mb"] = base / 1e6
        result["flood_kb"] = sent[0] / 1000
        return result
    finally:
        server.stop()


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(1 << 20):
            pass
    except OSError:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", default=[],
                    help="source tree to run the server from (repeatable; default: this one)")
    args = ap.parse_args()
    trees = args.tree or [None]
    print(f"{'tree':<24}{'attack':<22}{'RSS before':>11}{'peak':>9}{'after':>9}"
          f"{'ping worst':>12}{'median':>9}{'pings':>7}{'lost':>6}  extra")
    for tree in trees:
        for name, run in (("amplification", lambda t=tree: amplification(t)),
                          ("prompt, rate 100", lambda t=tree: prompt_flood(t, "100")),
                          ("prompt, rate 0", lambda t=tree: prompt_flood(t, "0"))):
            r = run()
            extra = f"flood {r['flood_kb']:.0f} kB" if "flood_kb" in r else ""
            print(f"{(tree or 'this tree')[-24:]:<24}{name:<22}{r['before_mb']:>9.1f}MB"
                  f"{r['peak_mb']:>7.1f}MB{r['after_mb']:>7.1f}MB{r['ping_worst_ms']:>10.0f}ms"
                  f"{r['ping_median_ms']:>7.1f}ms{r['pings']:>7}{r['lost']:>6}  {extra}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

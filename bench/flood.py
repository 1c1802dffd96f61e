"""What a connection flood costs the server: `python -m bench.flood [N] [ROUNDS]`.

Against one fresh server (`--max-per-ip 1 --connect-rate 0 --exempt 127.0.0.2/32`)
it measures the server's CPU time (utime + stime from /proc) per connection for:

- refused: from 127.0.0.3, which already holds its one allowed connection, so
  every attempt gets `error: too many connections from your address`;
- admitted, counted: from 127.0.0.4..., new addresses, each connection reads
  the prompt and hangs up (accept, session, prompt, EOF, close, and the
  per-address bookkeeping);
- admitted, exempt: the same from 127.0.0.2 (no per-address bookkeeping);

and the ping round trip of a logged-in client while each flood runs. Rounds
alternate the workloads; medians are printed. Also the server's RSS before and
after all the floods.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from bench.procstat import cpu_seconds, metric_value, rss_bytes


class Server:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="chatsrv-flood-")
        log_path = os.path.join(self.dir, "server.log")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            http_port = s.getsockname()[1]
        args = [sys.executable, "-m", "chatsrv", "serve", "--port", "0", "--store", "memory",
                "--http-port", str(http_port), "--data-dir", os.path.join(self.dir, "data"),
                "--max-per-ip", "1", "--connect-rate", "0", "--exempt", "127.0.0.2/32"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSRV_")}
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.http = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 30
        while True:
            with open(log_path, errors="replace") as f:
                match = re.search(r"listening on \S+:(\d+)", f.read())
            if match:
                self.port = int(match.group(1))
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("server did not start")
            time.sleep(0.05)

    def metric(self, name: str, **labels) -> float:
        return metric_value(self.http, name, **labels)

    def rss_kb(self) -> int:
        rss = rss_bytes(self.proc.pid)
        if rss is None:
            raise RuntimeError(f"server {self.proc.pid} is gone")
        return rss // 1024

    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid) or 0.0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Line:
    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20,
                                             source_address=(source, 0))
        self.buf = b""

    def send(self, line: str) -> None:
        self.sock.sendall((line + "\n").encode())

    def until(self, want: str) -> None:
        while True:
            while b"\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError
                self.buf += data
            line, self.buf = self.buf.split(b"\n", 1)
            if line.decode() == want:
                return

    def login(self, name: str) -> None:
        self.until("enter a username:")
        self.send(name)
        self.until("you joined the group General")

    def close(self) -> None:
        self.sock.close()


def flood(port: int, sources: list[str], n: int, want: str) -> None:
    for i in range(n):
        sock = socket.socket()
        sock.bind((sources[i % len(sources)], 0))
        sock.connect(("127.0.0.1", port))
        data = sock.recv(100)
        assert data.decode().startswith(want), data
        if i % 200 == 199:
            time.sleep(0.01)  # let the server's closes (and TIME_WAITs) keep up
        sock.close()


def pinger(port: int, stop: threading.Event, rtts: list[float]) -> None:
    conn = Line(port, source="127.0.0.2")
    conn.login(f"p{time.monotonic_ns()}")
    while not stop.is_set():
        t = time.perf_counter()
        conn.send("ping")
        conn.until("ok: pong")
        rtts.append(time.perf_counter() - t)
        time.sleep(0.002)
    conn.close()


def measure(server: Server, sources: list[str], n: int, want: str) -> tuple[float, float, float]:
    """(server CPU µs per connection, ping p50 ms, ping p99 ms) for one flood."""
    stop, rtts = threading.Event(), []
    thread = threading.Thread(target=pinger, args=(server.port, stop, rtts))
    thread.start()
    time.sleep(0.2)
    cpu = server.cpu_s()
    flood(server.port, sources, n, want)
    used = server.cpu_s() - cpu
    stop.set()
    thread.join()
    rtts.sort()
    return (used / n * 1e6, rtts[len(rtts) // 2] * 1e3, rtts[int(len(rtts) * 0.99)] * 1e3)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    server = Server()
    try:
        holder = socket.create_connection(("127.0.0.1", server.port),
                                          source_address=("127.0.0.3", 0))
        assert holder.recv(100).startswith(b"enter a username:")
        rss_before = server.rss_kb()
        # Many counted addresses, so the per-address entries come and go.
        counted = [f"127.0.{i // 250}.{4 + i % 250}" for i in range(1000)]
        workloads = {
            "refused (per_ip)": (["127.0.0.3"], "error: too many connections"),
            "admitted, counted": (counted, "enter a username:"),
            "admitted, exempt": (["127.0.0.2"], "enter a username:"),
        }
        results: dict[str, list] = {k: [] for k in workloads}
        for _ in range(rounds):
            for name, (sources, want) in workloads.items():
                results[name].append(measure(server, sources, n, want))
                time.sleep(2.5)  # per-address entries expire (2 s), TIME_WAITs settle
        rss_after = server.rss_kb()
        refused = server.metric("chatsrv_connections_rejected_total", reason="per_ip")
        print(f"flood: {n} connections per workload and round, {rounds} rounds, medians")
        print(f"{'workload':<20} {'server CPU/conn':>16} {'ping p50':>9} {'ping p99':>9}")
        for name, rows in results.items():
            cpu, p50, p99 = (statistics.median(col) for col in zip(*rows, strict=True))
            print(f"{name:<20} {cpu:>13.1f} µs {p50:>6.2f} ms {p99:>6.2f} ms")
        print(f"refused in all: {refused:.0f}; server RSS {rss_before / 1024:.1f} MiB before, "
              f"{rss_after / 1024:.1f} MiB after; per-address entries left: "
              f"{server.metric('chatsrv_limited_addresses'):.0f}")
        holder.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

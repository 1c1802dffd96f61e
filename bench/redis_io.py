"""How should redis-py run inside the gevent server? Measures the three options.

    python -m bench.redis_io redis://127.0.0.1:6379/0 [--n 5000]

For each way of sending one PUBLISH and waiting for its reply from a greenlet,
prints the round trips per second and the event loop's worst stall seen by a
1 ms ticker greenlet while they run (what every client of the node would feel):

- gevent:  redis-py over gevent sockets (chatsrv.backplane.conn.GeventConnection);
- thread:  plain redis-py in a gevent ThreadPool thread, one hand-off per command;
- blocking: plain redis-py called on the loop (what an unpatched process does).

And the publisher's case: N publishes sent as pipelines of 100 over gevent sockets.
"""

from __future__ import annotations

import argparse
import time

import gevent
from gevent.threadpool import ThreadPool

from chatsrv.backplane import conn


class Ticker:
    """The longest gap between 1 ms ticks: how long the loop was not ours."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.running = True
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        last = time.perf_counter()
        while self.running:
            gevent.sleep(0.001)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - 0.001)
            last = now

    def stop(self) -> float:
        self.running = False
        self.greenlet.join()
        return self.worst


def measure(name: str, call, n: int) -> None:
    call()  # connect first
    ticker = Ticker()
    gevent.sleep(0.01)
    started = time.perf_counter()
    for _ in range(n):
        call()
    spent = time.perf_counter() - started
    stall = ticker.stop()
    print(f"{name:9s} {n / spent:10,.0f} round trips/s  {spent / n * 1e6:7.1f} us each  "
          f"loop stalled up to {stall * 1000:6.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--n", type=int, default=5000)
    args = ap.parse_args()
    loop_client = conn.loop_client(args.url)
    thread_client = conn.thread_client(args.url)
    pool = ThreadPool(1)
    measure("gevent", lambda: loop_client.publish("bench:x", b"m"), args.n)
    measure("thread", lambda: pool.apply(thread_client.publish, ("bench:x", b"m")), args.n)
    measure("blocking", lambda: thread_client.publish("bench:x", b"m"), args.n)

    def pipelined() -> None:
        pipe = loop_client.pipeline(transaction=False)
        for _ in range(100):
            pipe.publish("bench:x", b"m" * 100)
        pipe.execute()

    pipelined()
    ticker = Ticker()
    started = time.perf_counter()
    batches = max(args.n // 100, 1)
    for _ in range(batches):
        pipelined()
    spent = time.perf_counter() - started
    print(f"pipelined {batches * 100 / spent:10,.0f} publishes/s (batches of 100)  "
          f"loop stalled up to {ticker.stop() * 1000:6.2f} ms")
    pool.kill()


if __name__ == "__main__":
    main()

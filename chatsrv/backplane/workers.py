"""`chatsrv serve --workers N`: N worker processes on one port, each a cluster node.

The supervisor (this module, a plain process: no gevent, no clients) binds the
port once with SO_REUSEPORT and keeps that socket, unlistened, for its whole
life: it resolves `--port 0` and holds the port while a worker restarts. Each
worker is `chatsrv serve` again with the same options plus `--node-id
<id>-w<i>`, `--reuse-port` and its own `--http-port` (base + i, or 0 = any):
it binds the same port with SO_REUSEPORT and listens, and the kernel spreads
new connections over the listening workers. They share nothing but Redis.

Metrics: each worker serves its own `/metrics` (and admin API) on its own
port. The chatsrv_* metrics are read at scrape time from the worker's live
state (users, send queues, counters), which prometheus_client's multiprocess
mode cannot do (it aggregates only its own metric objects, through files, and
drops custom collectors); one target per worker also lets Prometheus tell a
hot or crashed worker apart (`instance` label) and sum them with `sum()`.

A worker that exits while the supervisor is not stopping is restarted after a
backoff (0.5 s doubling to 30 s, reset once a worker has run for 60 s); its
node id is reused, so the cluster drops its previous run's users at once.
SIGTERM or SIGINT to the supervisor stops every worker gracefully (each says
`* server shutting down` to its clients) and exits 0 once all are gone; if the
supervisor itself is killed, the kernel sends each worker SIGTERM.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import fields

from .. import sdnotify
from ..config import Config
from ..configfile import Resolved

log = logging.getLogger("chatsrv.workers")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0
POLL_S = 0.1
PR_SET_PDEATHSIG = 1


def worker_argv(config: Config, index: int, port: int, node: str,
                resolved: Resolved | None = None) -> list[str]:
    """The `chatsrv serve` command line of worker `index`. With a --config file the
    worker reads it too (and again on reload), and gets as flags only what the
    supervisor's own flags and environment set, so the file's values can change."""
    argv = [sys.executable, "-m", "chatsrv", "serve"]
    if resolved is not None and resolved.path is not None:
        values = {name: value for name, (value, _) in resolved.explicit.items()}
        argv += ["--config", str(resolved.path)]
    else:
        values = {f.name: getattr(config, f.name) for f in fields(Config)}
    values.update(workers=1, port=port, node_id=f"{node}-w{index}",
                  http_port=config.http_port + index if config.http_port else 0)
    values.pop("reuse_port", None)
    values.pop("admin_token", None)  # through the environment: argv is visible to `ps`
    for name, value in values.items():
        if value is not None:
            argv += ["--" + name.replace("_", "-"), str(value)]
    return [*argv, "--reuse-port"]


class Worker:
    def __init__(self, index: int, argv: list[str], env: dict[str, str]) -> None:
        self.index = index
        self.argv = argv
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.backoff = BACKOFF_MIN_S
        self.restart_at: float | None = 0.0  # start now

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, env=self.env,
                                     preexec_fn=_die_with_parent)
        self.started = time.monotonic()
        self.restart_at = None
        log.info("worker %d started (pid %d)", self.index, self.proc.pid)

    def check(self, now: float) -> None:
        """Restart a worker that died, after its backoff."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
            return
        proc = self.proc
        assert proc is not None  # restart_at is None only once started
        code = proc.poll()
        if code is None:
            return
        if now - self.started >= STABLE_S:
            self.backoff = BACKOFF_MIN_S
        log.error("worker %d (pid %d) exited with %s; restarting in %.1f s",
                  self.index, proc.pid, _describe(code), self.backoff)
        self.restart_at = now + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MAX_S)


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM it if the supervisor dies (even by SIGKILL),
    so no orphaned worker keeps the port (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _describe(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def hold_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) with SO_REUSEPORT: resolves port 0 and keeps the port ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def supervise(config: Config, resolved: Resolved | None = None) -> int:
    """Run `config.workers` workers until SIGTERM/SIGINT; the exit code. SIGHUP is
    passed on to every worker (each reloads the config file)."""
    from .node import default_node_id

    if config.http_port and config.admin_token is None:
        from ..auth import load_or_create_token

        load_or_create_token(config.data_dir)  # made once, read by every worker
    holder = hold_port(config.host, config.port)
    port = holder.getsockname()[1]
    node = config.node_id or default_node_id()
    # NOTIFY_SOCKET too: the supervisor is the service systemd watches (the main pid).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CHATSRV_") and k != "NOTIFY_SOCKET"}
    if config.admin_token is not None:
        env["CHATSRV_ADMIN_TOKEN"] = config.admin_token
    workers = [Worker(i, worker_argv(config, i, port, node, resolved), env)
               for i in range(config.workers)]
    stop = {"signal": None}

    def on_signal(signum, frame) -> None:
        stop["signal"] = signum

    def on_hup(signum, frame) -> None:
        sdnotify.reloading()
        for worker in workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGHUP)
        sdnotify.ready("reload passed on to the workers")

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    log.info("supervising %d workers on %s:%d, nodes %s-w0..%d", config.workers, config.host,
             port, node, config.workers - 1)
    try:
        ready = False
        while stop["signal"] is None:
            now = time.monotonic()
            for worker in workers:
                worker.check(now)
            if not ready:  # the workers are started (each then binds and listens)
                sdnotify.ready(f"{config.workers} workers on {config.host}:{port}",
                               main_pid=True)
                ready = True
            time.sleep(POLL_S)
    finally:
        sdnotify.stopping()
        _stop_all(workers, config.shutdown_grace + 5.0)
        holder.close()
    log.info("all workers stopped")
    return 0


def _stop_all(workers: list[Worker], grace: float) -> None:
    running = [w.proc for w in workers if w.proc is not None and w.proc.poll() is None]
    log.info("stopping %d workers", len(running))
    for proc in running:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker pid %d did not stop in time; killing it", proc.pid)
            proc.kill()
            proc.wait()


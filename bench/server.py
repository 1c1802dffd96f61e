"""A fresh chatsrv process per workload, pinned to CPU 0."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.procstat import CpuMeter

DEFAULT_CMD = [str(Path(sys.executable).parent / "chatsrv"), "serve"]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


@dataclass
class Target:
    """The server under test: where it listens, its PID (if known) and the CPUs in play."""

    addr: tuple[str, int]
    pid: int | None
    cpus: set[int] | None  # server's and driver's CPUs when pinned; None = all
    web_addr: tuple[str, int] | None = None  # the web port (WebSocket workloads)

    def meter(self) -> CpuMeter:
        return CpuMeter(self.pid, self.cpus)


class BenchError(Exception):
    """A workload could not be run (the server did not start, died, ...)."""


def supported_flags(cmd: list[str]) -> set[str]:
    """The long options `cmd --help` mentions; earlier server versions lack some."""
    # A wide, plain terminal so rich/typer neither wraps nor colours option names.
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb")
    try:
        res = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"cannot run {' '.join(cmd)} --help: {e}") from e
    if res.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} --help exited {res.returncode}: {res.stderr[-300:]}")
    return set(re.findall(r"--[a-z][a-z0-9-]*", res.stdout + res.stderr))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """Starts `cmd` with the bench options it supports; `stop()` reports misbehaviour."""

    def __init__(self, cmd: list[str], flags: set[str], extra: list[str], pin_cpu: int | None):
        self.cmd, self.flags, self.extra, self.pin_cpu = cmd, flags, extra, pin_cpu
        self.port = free_port()
        self.web_port = free_port() if "--web-port" in flags else 0
        self.dir = tempfile.mkdtemp(prefix="chatsrv-bench-")
        self.log_path = os.path.join(self.dir, "server.log")
        self.proc: subprocess.Popen | None = None

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def web_addr(self) -> tuple[str, int] | None:
        return ("127.0.0.1", self.web_port) if self.web_port else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def argv(self) -> list[str]:
        wanted = [
            ("--host", "127.0.0.1"),
            ("--port", str(self.port)),
            ("--rate-limit", "0"),
            ("--create-rate", "0"),  # every bench client is 127.0.0.1: one address
            ("--http-port", "0"),
            ("--data-dir", os.path.join(self.dir, "data")),
            ("--max-clients", "20000"),
            ("--web-port", str(self.web_port)),  # its own, never the default 8080
        ]
        opts = [x for flag, val in wanted if flag in self.flags for x in (flag, val)]
        prefix = []
        if self.pin_cpu is not None and shutil.which("taskset"):
            prefix = ["taskset", "-c", str(self.pin_cpu)]
        return [*prefix, *self.cmd, *opts, *self.extra]

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        if self.pin_cpu is not None and not shutil.which("taskset"):
            os.sched_setaffinity(self.proc.pid, {self.pin_cpu})
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"server exited {self.proc.returncode} at start: {self.log_tail()}"
                )
            try:
                socket.create_connection(self.addr, timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise BenchError(f"server not accepting on port {self.port} after {START_TIMEOUT_S:g} s")

    def stop(self) -> str | None:
        """SIGTERM, wait, SIGKILL if needed; a description of anything wrong, else None."""
        problem = None
        if self.proc.poll() is not None:
            problem = f"died during the run, exit {self.proc.returncode}: {self.log_tail(2)}"
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(STOP_TIMEOUT_S)
                if code != 0:
                    problem = f"exit {code} after SIGTERM (protocol says 0)"
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                problem = f"ignored SIGTERM for {STOP_TIMEOUT_S:g} s, killed"
        tracebacks = self._log_tracebacks()
        if tracebacks:
            problem = f"{problem + '; ' if problem else ''}{tracebacks}"
        if problem:  # keep the log for the server's author
            shutil.rmtree(os.path.join(self.dir, "data"), ignore_errors=True)
            return f"{problem} (log: {self.log_path})"
        shutil.rmtree(self.dir, ignore_errors=True)
        return None

    def _log_tracebacks(self) -> str | None:
        text = self._log_text()
        n = text.count("Traceback (most recent call last)")
        if not n:
            return None
        last = text[text.rindex("Traceback") :].strip().splitlines()[-1]
        return f"{n} tracebacks in the server log, last: {last}"

    def _log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, lines: int = 5) -> str:
        return " / ".join(self._log_text().strip().splitlines()[-lines:])

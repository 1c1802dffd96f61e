"""Command line: pick workloads, start a fresh server for each, print one line each."""

import argparse
import ipaddress
import json
import os
import resource
import secrets
import shlex
import sys

from bench.accounts import run_logins
from bench.fanout import MAX_SENDERS, FanoutSpec, run_fanout
from bench.logins import run_connect, run_idle
from bench.report import summary
from bench.server import DEFAULT_CMD, BenchError, Server, Target, supported_flags

WORKLOADS = ("fanout", "fanout-ws", "fanout-w1", "fanout1000", "connect", "idle", "idle-ws",
             "logins")
GROUP = "benchgrp"
SERVER_CPU, DRIVER_CPU = 0, 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark chatsrv. Workloads: " + ", ".join(WORKLOADS) + " (default: all).",
    )
    ap.add_argument("workloads", nargs="*", metavar="WORKLOAD")
    ap.add_argument("--duration", type=float, default=10.0, help="fanout sending period, s")
    ap.add_argument("--receivers", type=int, help="fanout receivers (all fanout workloads)")
    ap.add_argument("--senders", type=int, help="fanout senders (all fanout workloads)")
    ap.add_argument("--window", type=int, help="in-flight messages per sender (not fanout-w1)")
    ap.add_argument("--conns", type=int, help="connections for connect and idle")
    ap.add_argument("--conc", type=int, default=50, help="logins in progress at once")
    ap.add_argument(
        "--server-cmd", default=shlex.join(DEFAULT_CMD), help="server command (shell words)"
    )
    ap.add_argument("--server-args", default="", help="extra server arguments (shell words)")
    ap.add_argument("--addr", help="HOST:PORT of an already running server (no fresh server)")
    ap.add_argument("--web-addr", help="HOST:PORT of the --addr server's web port (the -ws "
                    "workloads)")
    ap.add_argument("--pid", type=int, help="PID of the --addr server, for its CPU and RSS")
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and driver to CPUs")
    ap.add_argument("--json", action="store_true", help="print one JSON object per workload")
    args = ap.parse_args(argv)
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload {unknown[0]!r}; choose from {', '.join(WORKLOADS)}")
    if args.senders is not None and not 1 <= args.senders <= MAX_SENDERS:
        ap.error(f"--senders must be 1..{MAX_SENDERS}")
    for opt in ("receivers", "window", "conns", "conc", "duration"):
        if getattr(args, opt) is not None and getattr(args, opt) <= 0:
            ap.error(f"--{opt} must be positive")
    if args.addr:
        args.addr = _loopback_addr(ap, args.addr)
    if args.web_addr:
        args.web_addr = _loopback_addr(ap, args.web_addr)
    return args


def _loopback_addr(ap: argparse.ArgumentParser, text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = "127.0.0.1" if host == "localhost" else host
    try:
        if ipaddress.IPv4Address(host).is_loopback and port.isdigit():
            return host, int(port)
    except ValueError:
        pass
    return ap.error("--addr must be a 127.x.x.x HOST:PORT (the bench loads only loopback)")


def _fanout_spec(name: str, args: argparse.Namespace) -> FanoutSpec:
    r, s, w = {"fanout": (100, 4, 128), "fanout-ws": (100, 4, 128), "fanout-w1": (100, 4, 1),
               "fanout1000": (1000, 1, 128)}[name]
    if name != "fanout-w1" and args.window is not None:
        w = args.window
    return FanoutSpec(
        receivers=args.receivers or r,
        senders=args.senders or s,
        window=w,
        duration=args.duration,
        conc=args.conc,
        ws=name.endswith("-ws"),
    )


def run_workload(name: str, args: argparse.Namespace, target: Target) -> dict:
    # Fresh names per workload: a server given by --addr still knows earlier runs' users.
    prefix = "b" + secrets.token_hex(2)
    if name == "connect":
        return run_connect(target, args.conns or 2000, args.conc, prefix)
    if name in ("idle", "idle-ws"):
        return run_idle(target, args.conns or 10000, args.conc, prefix, ws=name == "idle-ws")
    if name == "logins":
        return {"error": "logins needs a fresh server (it seeds the data directory): no --addr"}
    return run_fanout(target, _fanout_spec(name, args), prefix, GROUP)


def run_on_fresh_server(name: str, args: argparse.Namespace, flags: set[str], pin) -> dict:
    extra = shlex.split(args.server_args)
    if name == "logins":
        extra += ["--accounts", "required"]
    server = Server(shlex.split(args.server_cmd), flags, extra, pin)
    result: dict = {}
    try:
        if name == "logins":  # seeds the data directory, then starts the server
            result = run_logins(server, _cpus(pin), args.conns or 500, args.conns or 2000,
                                args.conc)
        else:
            server.start()
            result = run_workload(name, args, Target(server.addr, server.pid, _cpus(pin),
                                                     server.web_addr))
    except BenchError as e:
        result["error"] = str(e)
    finally:
        problem = server.stop() if server.proc else None
    if problem:
        result["server_problem"] = problem
    return result


def raise_fd_limit() -> None:
    # idle holds 10,000 sockets; the default soft limit is usually 1024.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pin_driver(enabled: bool) -> int | None:
    """Pin this process to CPU 1; returns the CPU for the server, or None (no pinning)."""
    if not enabled or not {SERVER_CPU, DRIVER_CPU} <= os.sched_getaffinity(0):
        return None
    os.sched_setaffinity(0, {DRIVER_CPU})
    return SERVER_CPU


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    pin = pin_driver(not args.no_pin)
    flags: set[str] = set()
    try:
        if not args.addr:
            flags = supported_flags(shlex.split(args.server_cmd))
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    _describe(args, flags, pin)
    failed = False
    for name in args.workloads or WORKLOADS:
        if args.addr:
            # We did not pin that server: "other" CPU is measured over all CPUs.
            result = run_workload(name, args, Target(args.addr, args.pid, None, args.web_addr))
        else:
            result = run_on_fresh_server(name, args, flags, pin)
        result = {"workload": name, "mode": _mode(name), **result}
        print(json.dumps(result) if args.json else summary(result), flush=True)
        failed |= any(
            result.get(k) for k in ("error", "server_problem", "lost", "gaps", "reordered")
        )
    return 1 if failed else 0


def _cpus(pin: int | None) -> set[int] | None:
    return None if pin is None else {SERVER_CPU, DRIVER_CPU}


def _mode(name: str) -> str:
    return name if name in ("connect", "idle", "idle-ws", "logins") else "fanout"


def _describe(args: argparse.Namespace, flags: set[str], pin: int | None) -> None:
    """Setup notes on stderr, so stdout holds only the workload lines."""
    where = f"{args.addr[0]}:{args.addr[1]}" if args.addr else f"fresh `{args.server_cmd}`"
    pins = f"server CPU {SERVER_CPU}, driver CPU {DRIVER_CPU}" if pin is not None else "no pinning"
    if args.addr and pin is not None:
        pins = f"driver CPU {DRIVER_CPU}"
    notes = [f"bench: server {where}; {pins}"]
    missing = [
        f
        for f in ("--rate-limit", "--http-port", "--data-dir", "--max-clients")
        if not args.addr and f not in flags
    ]
    if missing:
        notes.append(f"server lacks {' '.join(missing)}: not passed")
    print("; ".join(notes), file=sys.stderr, flush=True)

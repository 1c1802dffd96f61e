"""`chatsrv serve --workers 2`: two processes on one port, chatting as one server,
supervised (a killed worker comes back), stopped together by SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

from conftest import Api, Client, start_server
from rediskit import redis_server  # noqa: F401 - the fixture

WORKER_PID = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def wait_for(predicate, what: str, wait: float = 20.0):
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def two_free_ports() -> int:
    """A port P with P + 1 free too (worker i serves HTTP on --http-port + i)."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            base = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
            return base
    raise AssertionError("no two consecutive free ports")


def logged_in(server, name: str) -> Client:
    client = Client(server.host, server.port)
    client.expect("enter a username:")
    client.send(name)
    client.expect(f"connected! welcome {name}", "you joined the group General")
    client.name = name
    return client


def test_two_workers_chat_restart_and_stop(redis_server, tmp_path):  # noqa: F811
    server = start_server(tmp_path, redis=redis_server.url, workers=2, node_id="w",
                          node_ttl=2, rate_limit=0, admin_token="tok-en",
                          http_port=two_free_ports())
    clients: list[Client] = []
    try:
        wait_for(lambda: server.log().count("listening on") >= 2, "both workers")
        urls = wait_for(lambda: re.findall(r"http on (http://\S+)", server.log())[:2]
                        if server.log().count("http on") >= 2 else None, "both HTTP ports")
        api = Api(urls[0], "tok-en")

        # The kernel spreads connections over the workers: log in until both have users.
        nodes: dict[str, str] = {}
        for i in range(40):
            clients.append(logged_in(server, f"u{i}"))
            users = api.ok("GET", "/api/v1/users")["users"]
            nodes = {u["node"]: u["name"] for u in users}
            if len(nodes) == 2:
                break
        assert set(nodes) == {"w-w0", "w-w1"}, nodes
        by_name = {c.name: c for c in clients}
        x, y = by_name[nodes["w-w0"]], by_name[nodes["w-w1"]]
        x.send(f"private {nodes['w-w1']} hello other worker")
        y.read_until(lambda line: line == f"[private from {nodes['w-w0']}] hello other worker")
        y.send("public General hi all")
        x.read_until(lambda line: line == f"[public group General from {nodes['w-w1']}] hi all")
        assert api.ok("GET", "/api/v1/stats")["users"] == len(clients)

        # A worker killed outright is restarted; its users leave, the others stay.
        pids = dict(WORKER_PID.findall(server.log()))
        os.kill(int(pids["0"]), signal.SIGKILL)
        assert x.closed()
        y.read_until(lambda line: line == f"* {nodes['w-w0']} left the group General")
        wait_for(lambda: "restarting" in server.log()
                 and server.log().count("listening on") >= 3, "the restarted worker")
        y.send("ping")
        y.read_until(lambda line: line == "ok: pong")

        # SIGTERM to the supervisor stops every worker gracefully.
        assert server.stop(signal.SIGTERM) == 0
        y.read_until(lambda line: line == "* server shutting down")
        assert y.closed()
        assert "all workers stopped" in server.log()
        assert "Traceback" not in server.log()
    finally:
        for c in clients:
            c.close()
        server.stop(signal.SIGKILL)


def test_workers_do_not_outlive_a_killed_supervisor(redis_server, tmp_path):  # noqa: F811
    server = start_server(tmp_path, redis=redis_server.url, workers=2, node_ttl=2)
    try:
        wait_for(lambda: len(WORKER_PID.findall(server.log())) >= 2, "both workers")
        pids = [int(pid) for _, pid in WORKER_PID.findall(server.log())]
        server.stop(signal.SIGKILL)

        def gone() -> bool:
            for pid in pids:
                try:
                    with open(f"/proc/{pid}/stat") as stat:  # a zombie until init reaps it
                        if stat.read().split()[2] != "Z":
                            return False
                except (FileNotFoundError, ProcessLookupError):
                    continue
            return True

        wait_for(gone, "the workers to exit")
    finally:
        server.stop(signal.SIGKILL)


def test_workers_under_systemd_reload_the_file(redis_server, tmp_path, monkeypatch):  # noqa: F811
    """The supervisor is what systemd watches: it says READY=1 and STOPPING=1 (the
    workers do not), and passes SIGHUP on to every worker, which reads the file again."""
    config = tmp_path / "chatsrv.toml"
    config.write_text(f'redis = "{redis_server.url}"\nworkers = 2\nnotice_limit = 10\n')
    notify = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(20)
        monkeypatch.setenv("NOTIFY_SOCKET", str(notify))
        server = start_server(tmp_path, config=config, node_id="s", node_ttl=2)
        try:
            ready = sock.recv(4096).decode()
            assert ready.startswith("READY=1\nSTATUS=2 workers on 127.0.0.1:")
            assert f"MAINPID={server.pid}" in ready
            wait_for(lambda: server.log().count("listening on") >= 2, "both workers")
            config.write_text(f'redis = "{redis_server.url}"\nworkers = 2\nnotice_limit = 20\n')
            server.proc.send_signal(signal.SIGHUP)
            assert sock.recv(4096).decode().startswith("RELOADING=1")
            assert sock.recv(4096).decode() == "READY=1\nSTATUS=reload passed on to the workers"
            wait_for(lambda: server.log().count("reload: changed notice_limit: 10 -> 20") == 2,
                     "both workers reloading")
            assert server.stop() == 0
            assert sock.recv(4096).decode() == "STOPPING=1\nSTATUS=shutting down"
            # The workers said nothing to systemd themselves (all are gone by now:
            # the supervisor waits for them, so anything sent would be queued here).
            sock.setblocking(False)
            try:
                extra = sock.recv(4096)
            except BlockingIOError:
                extra = b""
            assert extra == b""
        finally:
            server.stop(signal.SIGKILL)

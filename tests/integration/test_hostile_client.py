"""One client cannot hurt anyone else (PROTOCOL.md v2, "Limits every user lives
within" and "Dead peers and legacy clients"), each attack against a real server.

Every test here failed on 9983af6: pipelined `history` ran to the end before
sendq was checked, the prompt neither paid the rate limit nor yielded, and a
line without LF was never a line.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

BIG = "x" * 3000  # a message near the line limit (4096)


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    match = re.search(r"^" + pattern + "$", text, re.M)
    return float(match.group(1)) if match else 0.0


def fill_general(client, count: int) -> None:
    for _ in range(count):
        client.send(f"public General {BIG}")
    client.sync()


def test_pipelined_history_stops_at_sendq(make_http_server, login, connect):
    """100 `history General 200` in one write (each reply ~600 KB) end the session
    with reason sendq after at most a few have run, not after all 100."""
    server = make_http_server(rate_limit=0)
    writer = login(server, "writer")
    fill_general(writer, 200)
    before = metric(server.api.metrics(), "chatsrv_commands_total", command="history")
    hostile = login(server, "hostile")
    hostile.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hostile.send(b"history General 200\n" * 100)
    bystander = login(server, "bystander")
    deadline = time.monotonic() + 30
    while "hostile" in bystander.request("users") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "hostile" not in bystander.request("users").split()
    text = server.api.metrics()
    ran = metric(text, "chatsrv_commands_total", command="history") - before
    assert ran <= 3, f"{ran} history commands ran for a session past its sendq"
    assert metric(text, "chatsrv_disconnects_total", reason="sendq") >= 1
    assert bystander.request("ping") == "ok: pong"


def test_pipelined_groups_and_pings_cut_at_small_sendq(make_http_server, login):
    """Small replies add up too: the queue is counted line by line."""
    server = make_http_server(rate_limit=0, sendq=4096)
    hostile = login(server, "hostile")
    hostile.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hostile.send(b"help\n" * 2000)
    assert hostile.closed(10)
    text = server.api.metrics()
    assert metric(text, "chatsrv_commands_total", command="help") < 200
    assert metric(text, "chatsrv_disconnects_total", reason="sendq") == 1


def _flood_prompt(server, stop: threading.Event, sent: list[int]) -> None:
    """Invalid names at the prompt as fast as the socket takes them; the replies
    are read (and dropped) by a second thread, so sendq never ends the flood."""
    sock = socket.create_connection((server.host, server.port))

    def drain() -> None:
        try:
            while sock.recv(1 << 20):
                pass
        except OSError:
            pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    sock.settimeout(0.2)
    chunk = b"!bad name!\n" * 20000
    try:
        while not stop.is_set():
            try:
                sent[0] += sock.send(chunk)
            except TimeoutError:
                continue
            except OSError:
                return  # cut off: fine
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        reader.join()


@pytest.mark.parametrize("rate_limit", [0, 100])
def test_prompt_flood_does_not_delay_others(make_server, login, rate_limit):
    """A socket pouring invalid names at the prompt: a logged-in user's pings are
    still answered throughout (on 9983af6 the server froze while it lasted)."""
    server = make_server(rate_limit=rate_limit, login_timeout=30)
    bystander = login(server, "bystander")
    stop, sent = threading.Event(), [0]
    flooders = [threading.Thread(target=_flood_prompt, args=(server, stop, sent))
                for _ in range(2)]
    for thread in flooders:
        thread.start()
    worst = 0.0
    try:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            started = time.monotonic()
            assert bystander.request("ping") == "ok: pong"
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.02)
    finally:
        stop.set()
        for thread in flooders:
            thread.join()
    assert sent[0] > 0
    # A liveness bound, not a speed target: a frozen loop never answers at all.
    assert worst < 2.0, f"a ping waited {worst:.2f} s behind a prompt flood"


def test_prompt_lines_pay_the_rate_limit(make_server, connect):
    """At --rate-limit 5 (burst 10), 60 invalid names get their answers paced."""
    server = make_server(rate_limit=5)
    client = connect(server)
    client.expect("enter a username:")
    client.send(b"!\n" * 60)
    started = time.monotonic()
    prompts = 0
    client.sock.settimeout(0.2)
    while time.monotonic() - started < 1.0:
        try:
            data = client.sock.recv(65536)
        except TimeoutError:
            continue
        prompts += data.count(b"enter a username:")
    elapsed = time.monotonic() - started
    # An upper bound on pace (a slow machine only answers fewer): burst + rate x time.
    assert 0 < prompts <= 10 + 5 * elapsed + 2, prompts


class SeedClient:
    """What ../shared/seed/seed_client.py does: each typed line is sent with
    `send(line.encode())`, no LF, and whatever arrives is read as it comes."""

    def __init__(self, server) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=10)
        self.buf = b""

    def type(self, line: str) -> None:
        self.sock.send(line.encode("utf-8"))

    def wait_for(self, wanted: str, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while wanted.encode() not in self.buf:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            data = self.sock.recv(4096)
            if not data:
                break
            self.buf += data
        lines = self.buf.decode().splitlines()
        assert wanted in self.buf.decode(), f"{wanted!r} not in {lines}"
        self.buf = b""
        return lines


def test_seed_client_lines_without_lf_are_served(make_server, login):
    server = make_server(rate_limit=0)
    bob = login(server, "bob")
    seed = SeedClient(server)
    seed.wait_for("enter a username:")
    seed.type("alice")
    seed.wait_for("you joined the group General")
    bob.expect("* alice joined the group General")
    time.sleep(0.5)  # a human types the next line
    seed.type("users")
    assert "users: alice bob" in seed.wait_for("users: ")
    time.sleep(0.5)
    seed.type("public General hello from the seed client")
    bob.expect("[public group General from alice] hello from the seed client")
    time.sleep(0.5)
    seed.type("exit")
    seed.wait_for("ok: bye")
    bob.expect("* alice left the group General")


def test_seed_client_invalid_name_then_valid(make_server):
    server = make_server(rate_limit=0)
    seed = SeedClient(server)
    seed.wait_for("enter a username:")
    seed.type("no!such!name")
    lines = seed.wait_for("enter a username:")
    assert lines[0].startswith("error: invalid username:")
    seed.type("carol")
    seed.wait_for("connected! welcome carol")


def test_client_with_lf_never_sees_silence_lines(make_server, login):
    """After a username ended by LF, a partial line and a pause is not a line."""
    server = make_server(rate_limit=0)
    client = login(server, "alice")
    client.send(b"pi")
    client.no_line(0.6)
    client.send(b"ng\n")
    client.expect("ok: pong")

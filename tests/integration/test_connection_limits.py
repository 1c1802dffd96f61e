"""Connection floods against a real server: per-address cap, connect rate, exempt
networks, the unauthenticated cap. Each flood is bounded (hundreds of sockets)
and a normal client, on another loopback address, is served throughout.

Every test client connects from 127.0.0.0/8, which is exempt by default, so
these servers run with `--exempt ''` (or another range) and the clients pick
their source address: Linux routes all of 127/8 to loopback.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest
from conftest import Client
from prometheus_client.parser import text_string_to_metric_families

PROMPT = "enter a username:"
TOO_MANY = "error: too many connections from your address"
TOO_FAST = "error: connecting too fast"
BUSY = "error: server busy, try again later"

NORMAL = "127.0.0.2"
FLOODER = "127.0.0.3"


def connect_from(server, source: str, timeout: float = 10.0) -> Client:
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect((host, server.port))
    return Client(server.host, server.port, sock=sock)


def first_line(client: Client) -> str:
    """The first line, and for a refusal also that the server closed right after it."""
    line = client.read_line()
    if line != PROMPT:
        assert client.closed(), f"{line!r} not followed by a close"
        assert not client.buf
    return line


def login_from(server, source: str, name: str) -> Client:
    client = connect_from(server, source)
    client.expect(PROMPT)
    client.send(name)
    client.expect(f"connected! welcome {name}", "you joined the group General")
    client.name = name
    return client


def metrics(server) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(server.api.metrics()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def rejected(server, reason: str) -> float:
    return metrics(server)[("chatsrv_connections_rejected_total", (("reason", reason),))]


def gauge(server, name: str) -> float:
    return metrics(server)[(name, ())]


def poll(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Chatter:
    """The normal client: alice pings and posts, bob receives; counts round trips."""

    def __init__(self, server) -> None:
        self.alice = login_from(server, NORMAL, "alice")
        self.bob = login_from(server, NORMAL, "bob")
        self.alice.read_until(lambda line: line == "* bob joined the group General")
        self.rounds = 0

    def round(self) -> None:
        n = self.rounds
        assert self.alice.request("ping") == "ok: pong"
        self.alice.send(f"public General hello {n}")
        assert self.bob.read_line() == f"[public group General from alice] hello {n}"
        self.rounds += 1

    def during(self, flood) -> list:
        """Run `flood()` in a thread; chat until it ends; its result."""
        out: list = []
        thread = threading.Thread(target=lambda: out.append(flood()))
        thread.start()
        while thread.is_alive():
            self.round()
        thread.join()
        self.round()
        return out[0]


def open_many(server, source: str, n: int) -> tuple[list[Client], list[str]]:
    """Connect n times from `source`: (the admitted clients, left open; every first line)."""
    kept, lines = [], []
    for _ in range(n):
        client = connect_from(server, source)
        line = first_line(client)
        lines.append(line)
        if line == PROMPT:
            kept.append(client)
        else:
            client.close()
    return kept, lines


def refusal_logs(server, address: str) -> list[str]:
    return re.findall(rf"refusing connections from {re.escape(address)}:.*", server.log())


def test_per_address_limit_refuses_a_flood_and_others_are_served(make_http_server):
    server = make_http_server(rate_limit=0, exempt="", max_per_ip=5, connect_rate=0)
    chat = Chatter(server)
    kept, lines = chat.during(lambda: open_many(server, FLOODER, 300))
    assert lines[:5] == [PROMPT] * 5
    assert lines[5:] == [TOO_MANY] * 295
    assert chat.rounds >= 2
    # The normal address has its own count: alice and bob, plus 3 more.
    more, normal_lines = open_many(server, NORMAL, 4)
    assert normal_lines == [PROMPT] * 3 + [TOO_MANY]
    assert rejected(server, "per_ip") == 296
    assert rejected(server, "rate") == rejected(server, "unauth") == 0
    logged = refusal_logs(server, FLOODER)
    assert logged == ["refusing connections from 127.0.0.3: 5 connections open "
                      "(--max-per-ip 5); logged once a minute per address"]
    # Closing one frees one slot (once the server has seen the close).
    kept.pop().close()
    again = poll(lambda: [c for c in [connect_from(server, FLOODER)] if first_line(c) == PROMPT],
                 "a free slot")
    kept += again
    assert first_line(connect_from(server, FLOODER)) == TOO_MANY
    for client in kept + more:
        client.close()
    # Both addresses are forgotten once their connections are gone (no rate: at once).
    poll(lambda: gauge(server, "chatsrv_limited_addresses") == 1, "only alice's address left")
    chat.round()
    assert "Traceback" not in server.log()


def test_connect_rate_refuses_a_burst_and_the_address_recovers(make_http_server):
    server = make_http_server(rate_limit=0, exempt="", max_per_ip=0, connect_rate=5)
    chat = Chatter(server)  # two connections from NORMAL: 8 tokens left there

    def flood():
        started = time.monotonic()
        lines = []
        for _ in range(150):
            client = connect_from(server, FLOODER)
            lines.append(first_line(client))
            client.close()
        return lines, time.monotonic() - started

    lines, elapsed = chat.during(flood)
    admitted = lines.count(PROMPT)
    assert lines[:10] == [PROMPT] * 10  # the burst: twice the rate
    assert set(lines) == {PROMPT, TOO_FAST}
    assert admitted <= 10 + 5 * elapsed + 1  # then at most the rate
    assert rejected(server, "rate") == 150 - admitted
    assert len(refusal_logs(server, FLOODER)) == 1
    # Another address is not slowed by the flooder's bucket.
    others, lines = open_many(server, "127.0.0.4", 3)
    assert lines == [PROMPT] * 3
    for client in others:
        client.close()
    # The bucket refills: the flooder gets in again (a token every 0.2 s).
    poll(lambda: first_line(connect_from(server, FLOODER)) == PROMPT, "a refilled token")
    chat.round()
    # Once their buckets are full again (2 s) the idle addresses are forgotten.
    assert gauge(server, "chatsrv_limited_addresses") == 3
    poll(lambda: gauge(server, "chatsrv_limited_addresses") == 1, "idle entries dropped")


def test_exempt_addresses_skip_both_limits(make_server):
    server = make_server(rate_limit=0, exempt="127.0.0.2/32, 192.0.2.0/24",
                         max_per_ip=2, connect_rate=1)
    _, lines = open_many(server, NORMAL, 20)
    assert lines == [PROMPT] * 20
    _, lines = open_many(server, FLOODER, 3)
    assert lines == [PROMPT] * 2 + [TOO_MANY]


def test_loopback_is_exempt_by_default(make_server):
    server = make_server(host="::", rate_limit=0, max_per_ip=2, connect_rate=1)
    _, lines = open_many(server, "127.0.0.1", 10)
    _, more = open_many(server, FLOODER, 10)
    _, v6 = open_many(server, "::1", 10)
    assert lines == more == v6 == [PROMPT] * 10


def test_dual_stack_listener_limits_ipv4_mapped_peers_by_their_ipv4_address(make_server):
    server = make_server(host="::", rate_limit=0, exempt="127.0.0.2", max_per_ip=2,
                         connect_rate=0)
    _, exempt = open_many(server, NORMAL, 5)  # arrives as ::ffff:127.0.0.2
    _, limited = open_many(server, FLOODER, 3)
    _, v6 = open_many(server, "::1", 3)
    assert exempt == [PROMPT] * 5
    assert limited == v6 == [PROMPT] * 2 + [TOO_MANY]
    assert "refusing connections from 127.0.0.3:" in server.log()
    assert "refusing connections from ::/64:" in server.log()


def test_unauthenticated_cap_then_the_login_timeout_frees_the_slots(make_http_server):
    server = make_http_server(rate_limit=0, max_unauth=20, login_timeout=3)
    chat = Chatter(server)  # logged in: they do not count
    lurkers, lines = open_many(server, "127.0.0.1", 20)
    assert lines == [PROMPT] * 20
    assert gauge(server, "chatsrv_connections_unauthenticated") == 20
    _, refused = chat.during(lambda: open_many(server, "127.0.0.1", 100))
    assert refused == [BUSY] * 100
    assert rejected(server, "unauth") == 100
    assert len(re.findall(r"refusing connections \(unauth\): 20 connections not logged in "
                          r"\(--max-unauth 20\)", server.log())) == 1
    # A login frees a slot at once, while the name's owner keeps chatting.
    lurkers[0].send("carol")
    lurkers[0].expect("connected! welcome carol", "you joined the group General")
    chat.alice.expect("* carol joined the group General")
    chat.bob.expect("* carol joined the group General")
    poll(lambda: first_line(connect_from(server, "127.0.0.1")) == PROMPT, "a slot after login")
    # The rest never speak: the login timeout closes them, and the cap no longer bites.
    for client in lurkers[1:]:
        client.read_until(lambda line: line == "error: login timeout")
        assert client.closed()
    poll(lambda: gauge(server, "chatsrv_connections_unauthenticated") == 0, "no lurkers left")
    _, lines = open_many(server, "127.0.0.1", 5)
    assert lines == [PROMPT] * 5
    chat.round()


@pytest.mark.parametrize("option", ["--max-per-ip", "--connect-rate", "--max-unauth",
                                    "--exempt"])
def test_serve_help_lists_the_limit_options(option):
    from typer.testing import CliRunner

    from chatsrv.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200",
                                                                "NO_COLOR": "1"})
    assert result.exit_code == 0 and option in result.output

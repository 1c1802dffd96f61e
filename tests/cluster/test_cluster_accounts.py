"""Accounts across two nodes on a real Redis (PROTOCOL.md v2: cluster-wide within 1 s)."""

from __future__ import annotations

import time

from conftest import Api, Client, free_port
from rediskit import redis_server  # noqa: F401 - the fixture

TOKEN = "cluster-admin-token-0123"
PROMPT = "enter a username:"


def node(make_server, redis, i: int, **options):
    port = free_port()
    server = make_server(redis=redis.url, node_id=f"node{i}", rate_limit=0, node_ttl=2.0,
                         accounts="optional", http_port=port, admin_token=TOKEN, **options)
    server.api = Api(f"http://127.0.0.1:{port}", TOKEN)
    return server


def attempt(server, line: str) -> Client:
    client = Client(server.host, server.port)
    client.expect(PROMPT)
    client.send(line)
    return client


def eventually(check, wait: float = 5.0) -> None:
    deadline = time.monotonic() + wait
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.05)


def test_accounts_are_cluster_wide(redis_server, make_server):  # noqa: F811
    a, b = node(make_server, redis_server, 0), node(make_server, redis_server, 1)
    a.api.ok("POST", "/api/v1/accounts", {"name": "alice", "password": "correct-horse"})
    # Created on A, known on B within a second (and listed there).
    started = time.monotonic()
    eventually(lambda: any(x["name"] == "alice"
                           for x in b.api.ok("GET", "/api/v1/accounts")["accounts"]))
    assert time.monotonic() - started < 1.5
    on_b = attempt(b, "alice correct-horse")
    on_b.expect("connected! welcome alice", "you joined the group General")

    # A login on A ends the session on B.
    on_a = attempt(a, "alice correct-horse")
    on_b.expect("* disconnected: logged in from another connection")
    on_a.expect("connected! welcome alice", "you joined the group General")
    assert on_b.closed()

    # The password changed on A: B refuses the old one.
    assert on_a.request("password correct-horse battery-staple") == "ok: password changed"
    eventually(lambda: _login_fails(b, "alice correct-horse"))

    # Five failures on B (the old password above counted too) throttle password
    # logins on A as well; tokens still work.
    token = on_a.request("token").removeprefix("ok: token ")
    answers = []
    while len(answers) < 5 and not answers[-1:] == ["throttled"]:
        answer = _answer(b, "alice wrong-password")
        answers.append("throttled" if "too many" in answer else answer)
    assert answers[-1] == "throttled"
    assert all(x == "error: login failed" for x in answers[:-1])
    eventually(lambda: _answer(a, "alice battery-staple") ==
               "error: too many failed logins for alice, try again later")
    attempt(a, f"alice {token}").expect("connected! welcome alice")

    # Suspended on B: the session on A ends.
    current = attempt(a, f"alice {token}")
    current.expect("connected! welcome alice", "you joined the group General")
    b.api.ok("POST", "/api/v1/accounts/alice/suspend", {})
    current.expect("* disconnected by an administrator")
    assert current.closed()


def _answer(server, line: str) -> str:
    client = attempt(server, line)
    try:
        return client.read_line()
    finally:
        client.close()


def _login_fails(server, line: str) -> bool:
    return _answer(server, line) == "error: login failed"


def test_redis_away_account_changes_refused_and_nothing_half_made(redis_server, make_server):  # noqa: F811
    """With Redis unreachable, what must be shared answers `cluster unavailable`
    (503 in the API) and creates nothing; a login, which claims its name in Redis,
    is refused the same way even with the right password."""
    a = node(make_server, redis_server, 0)
    a.api.ok("POST", "/api/v1/accounts", {"name": "alice", "password": "correct-horse"})
    guest = attempt(a, "gina")
    guest.expect("connected! welcome gina", "you joined the group General")
    redis_server.stop()
    guest.send("register ginas-password")
    guest.read_until(lambda line: line == "error: cluster unavailable")
    status, body = a.api.call("POST", "/api/v1/accounts", {"name": "zed", "password": "zeds-password"})
    assert status == 503, (status, body)
    assert "zed" not in str(a.api.ok("GET", "/api/v1/accounts"))
    login = attempt(a, "alice correct-horse")
    assert login.read_line() == "error: cluster unavailable"
    redis_server.start()  # same port, empty: nothing of gina or zed was written
    assert redis_server.command("HEXISTS", "chatsrv:accounts", "gina") == b":0\r\n"
    assert redis_server.command("HEXISTS", "chatsrv:accounts", "zed") == b":0\r\n"

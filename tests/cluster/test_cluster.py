"""Several `chatsrv serve --redis` nodes on one real Redis behave as one server.

Every cross-node behaviour of PROTOCOL.md in cluster mode: listings, unique
names (and the race for one), public/private/notices across nodes, history,
per-sender order, the admin API on any node, a node killed with SIGKILL, and
Redis stopped and restarted mid-chat.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from chatsrv_admin.cli import app
from conftest import free_port
from rediskit import redis_server  # noqa: F401 - the fixture
from typer.testing import CliRunner

TTL = 2.0  # --node-ttl in these tests
HISTORY = re.compile(r"\[history group (\S+) at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ from (\S+)\] (.*)")


def cluster(factory, redis, n: int, **options) -> list:
    opts = {"rate_limit": 0, "node_ttl": TTL, **options}
    return [factory(redis=redis.url, node_id=f"node{i}", **opts) for i in range(n)]


def until(client, command: str, predicate, wait: float = 10.0) -> str:
    """Send `command` until its one-line reply satisfies `predicate` (cluster state
    that another node made travels through Redis: poll rather than sleep)."""
    deadline = time.monotonic() + wait
    while True:
        client.send(command)  # its reply is the next line that is not chat or a notice
        reply = client.read_until(lambda x: not x.startswith(("* ", "[")))[-1]
        if predicate(reply):
            return reply
        assert time.monotonic() < deadline, f"{command!r}: last reply {reply!r}"
        time.sleep(0.05)


def test_two_nodes_chat_as_one_server(redis_server, make_server, login, connect):  # noqa: F811
    a, b = cluster(make_server, redis_server, 2)
    alice = login(a, "alice")
    bob = login(b, "bob")
    alice.expect("* bob joined the group General")
    assert alice.request("users") == "users: alice bob"
    assert bob.request("users") == "users: alice bob"

    # A name is unique across the nodes, whatever the case.
    other = connect(b)
    other.expect("enter a username:")
    other.send("ALICE")
    other.expect("error: username taken: ALICE", "enter a username:")

    alice.send("public General hello from A")
    bob.expect("[public group General from alice] hello from A")
    bob.send("public General hello from B")
    alice.expect("[public group General from bob] hello from B")
    alice.send("private BOB psst")
    bob.expect("[private from alice] psst")
    bob.send("private alice back")
    alice.expect("[private from bob] back")

    # A group made on one node exists on the other; notices cross both ways.
    assert alice.request("create dev") == "ok: created group dev"
    until(bob, "groups", lambda r: r == "groups: dev General")
    assert bob.request("create DEV") == "error: group already exists: dev"
    assert bob.request("join Dev") == "ok: joined group dev"
    assert alice.request("join dev") == "ok: joined group dev"
    alice.send("public dev one")
    bob_heard = bob.read_until(lambda x: x == "[public group dev from alice] one")[:-1]
    bob.send("public dev two")
    alice_heard = alice.read_until(lambda x: x == "[public group dev from bob] two")[:-1]
    # The joins raced through Redis: whichever came second there is announced to
    # the other (before that one's message), never both, never neither.
    assert (alice_heard, bob_heard) in (
        (["* bob joined the group dev"], []), ([], ["* alice joined the group dev"]))

    # History is the cluster's, read on either node.
    for client in (alice, bob):
        client.send("history dev")
        lines = [client.read_line() for _ in range(3)]
        assert [HISTORY.fullmatch(x).groups() for x in lines[:2]] == [
            ("dev", "alice", "one"), ("dev", "bob", "two")]
        assert lines[2] == "ok: end of history dev"

    assert bob.request("leave dev") == "ok: left group dev"
    alice.expect("* bob left the group dev")
    bob.send("public dev nope")
    bob.expect("error: not a member of dev")
    bob.send("exit")
    bob.expect("ok: bye")
    alice.expect("* bob left the group General")
    assert alice.request("users") == "users: alice"
    # The name is free cluster-wide at once: on the node that did not hold it too.
    login(a, "Bob")
    alice.expect("* Bob joined the group General")


def test_three_nodes_name_race_and_sender_order(redis_server, make_server, login,  # noqa: F811
                                                 connect):
    nodes = cluster(make_server, redis_server, 3)
    # 24 connections at the prompt, 8 per node, all ask for one name at once.
    racers = [connect(nodes[i % 3]) for i in range(24)]
    for client in racers:
        client.expect("enter a username:")
    for client in racers:
        client.send("Racer")
    replies = [client.read_line() for client in racers]
    assert replies.count("connected! welcome Racer") == 1
    assert replies.count("error: username taken: Racer") == 23

    # Two nodes create the same group at the same moment: exactly one succeeds.
    makers = [login(node, f"maker{i}") for i, node in enumerate(nodes)]
    for maker in makers:
        maker.send("create arena")
    results = [maker.read_until(lambda x: not x.startswith("* ")) for maker in makers]
    outcomes = sorted(r[-1] for r in results)
    assert outcomes == ["error: group already exists: arena"] * 2 + ["ok: created group arena"]

    # One sender on node0, receivers on node1 and node2: every message, in order,
    # with the sender's join notice first.
    receivers = [login(nodes[1], "r1"), login(nodes[2], "r2")]
    for r in receivers:
        until(r, "join arena", lambda x: x in ("ok: joined group arena",))
    sender = login(nodes[0], "sender")
    for r in receivers:
        r.sync()
    sender.send("join arena")
    burst = [f"public arena m{i:04d}" for i in range(300)]
    sender.send(("\n".join(burst) + "\n").encode())
    for r in receivers:
        lines = r.read_until(lambda x: x.endswith("m0299"))
        chat = [x for x in lines if "sender" in x and "arena" in x]
        assert chat[0] == "* sender joined the group arena"
        assert chat[1:] == [f"[public group arena from sender] m{i:04d}" for i in range(300)]


def bob_in_ops(redis, make_http_server, login):
    """Two nodes with admin APIs; alice on node A, bob on node B in a group `ops` he made."""
    a, b = cluster(make_http_server, redis, 2, admin_token="secret-token")
    alice = login(a, "alice")
    bob = login(b, "bob")
    alice.expect("* bob joined the group General")
    assert bob.request("create ops") == "ok: created group ops"
    assert bob.request("join ops") == "ok: joined group ops"
    # The new group reaches node A through Redis: wait for it there, or a `join
    # ops` on A can come first and get `no such group` (CI saw it under load).
    until(alice, "groups", lambda r: r == "groups: General ops")
    return a, b, alice, bob


def test_admin_api_sees_and_acts_on_the_whole_cluster(redis_server,  # noqa: F811
                                                      make_http_server, login):
    a, b, alice, bob = bob_in_ops(redis_server, make_http_server, login)
    api = a.api

    def users() -> dict:
        return {u["name"]: u for u in api.ok("GET", "/api/v1/users")["users"]}

    deadline = time.monotonic() + 10  # bob's join travels from node1 through Redis
    while users()["bob"]["groups"] != ["General", "ops"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert {n: u["node"] for n, u in users().items()} == {"alice": "node0", "bob": "node1"}
    # chatsrv-admin shows which node each user is on.
    result = CliRunner().invoke(app, ["--url", a.http_url, "--token", "secret-token", "users"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    cells = [[c.strip() for c in line.split("│")[1:3]]
             for line in result.output.splitlines() if line.startswith("│")]
    # A narrow console wraps the groups cell onto a row of its own: skip those.
    cells = [row for row in cells if row[0]]
    assert cells == [["alice", "node0"], ["bob", "node1"]], result.output
    groups = {g["name"]: g["members"] for g in api.ok("GET", "/api/v1/groups")["groups"]}
    assert groups == {"General": 2, "ops": 1}
    assert api.ok("GET", "/api/v1/groups/ops")["members"] == ["bob"]
    assert api.post("/api/v1/groups", {"name": "OPS"})[0] == 409  # made on node1
    assert api.post("/api/v1/groups", {"name": "api-made"})[0] == 201
    until(bob, "groups", lambda r: r == "groups: api-made General ops")
    stats = api.ok("GET", "/api/v1/stats")
    assert stats["users"] == 2 and stats["cluster"]["node"] == "node0"

    assert api.ok("POST", "/api/v1/announce", {"text": "to all"})["delivered"] == 2
    alice.expect("* announcement: to all")
    bob.expect("* announcement: to all")
    assert api.ok("POST", "/api/v1/announce", {"text": "ops only", "group": "OPS"}) == {
        "delivered": 1, "group": "OPS"}
    bob.expect("* announcement: ops only")

    # Kick a user of the other node from this one; the name is free when it answers.
    assert api.ok("POST", "/api/v1/users/BOB/kick") == {"kicked": "bob"}
    bob.expect("* disconnected by an administrator")
    assert bob.closed()
    alice.expect("* bob left the group General")
    login(a, "bob")
    status, _ = api.post("/api/v1/users/nobody/kick")
    assert status == 404
    metrics = api.metrics()
    assert 'chatsrv_cluster_node_info{node="node0"} 1.0' in metrics
    assert "chatsrv_cluster_up 1.0" in metrics
    assert "chatsrv_cluster_remote_users 0.0" in metrics  # bob was kicked; alice is local


def test_node_killed_its_users_leave_within_the_ttl(redis_server, make_server,  # noqa: F811
                                                      login):
    a, b = cluster(make_server, redis_server, 2)
    alice = login(a, "alice")
    bob = login(b, "bob")
    alice.expect("* bob joined the group General")
    assert alice.request("create dev") == "ok: created group dev"
    assert alice.request("join dev") == "ok: joined group dev"
    until(bob, "join dev", lambda r: r == "ok: joined group dev")
    bob.send("public dev ready")  # once alice has it, node0 knows bob is in dev
    alice.read_until(lambda x: x == "[public group dev from bob] ready")

    killed = time.monotonic()
    os.kill(b.pid, signal.SIGKILL)
    b.proc.wait()
    left = {alice.read_line(), alice.read_line()}
    spent = time.monotonic() - killed
    assert left == {"* bob left the group General", "* bob left the group dev"}
    # A correctness bound (the heartbeat's TTL), with slack for a loaded machine.
    assert spent < TTL + 3, f"cleanup took {spent:.1f} s"
    assert alice.request("users") == "users: alice"
    login(a, "bob")  # the dead node's name is free
    assert "reaped" in a.log()


def test_redis_outage_clients_stay_and_chat_resumes(redis_server, make_server,  # noqa: F811
                                                     login, connect):
    a, b = cluster(make_server, redis_server, 2)
    alice = login(a, "alice")
    carol = login(a, "carol")
    bob = login(b, "bob")
    for client in (alice, carol):
        client.read_until(lambda x: x == "* bob joined the group General")

    redis_server.stop()
    until(alice, "users", lambda r: r == "error: cluster unavailable")
    # Each node notices the outage on its own: wait for bob's too (asserting at
    # once failed when node b's next Redis call had not happened yet).
    until(bob, "groups", lambda r: r == "error: cluster unavailable")
    alice.send("private bob are you there")
    alice.expect("error: cluster unavailable")
    # Local chat goes on; logins wait for the cluster.
    alice.send("public General local only")
    carol.read_until(lambda x: x == "[public group General from alice] local only")
    newcomer = connect(a)
    newcomer.expect("enter a username:")
    newcomer.send("dave")
    newcomer.expect("error: cluster unavailable", "enter a username:")

    redis_server.start()  # same port, no data: the nodes register everything again
    until(alice, "users", lambda r: r == "users: alice bob carol", wait=20)
    until(bob, "users", lambda r: r == "users: alice bob carol", wait=20)
    bob.sync()
    alice.send("public General back again")
    bob.read_until(lambda x: x == "[public group General from alice] back again")
    bob.send("private carol hi carol")
    carol.read_until(lambda x: x == "[private from bob] hi carol")
    newcomer.send("dave")
    newcomer.expect("connected! welcome dave", "you joined the group General")
    for client in (alice, bob, carol):
        client.read_until(lambda x: x == "* dave joined the group General")
    assert "cluster unavailable" in a.log() and "available again" in a.log()
    assert "Traceback" not in a.log() + b.log()


def test_a_node_stopped_gracefully_says_goodbye_at_once(redis_server, make_server,  # noqa: F811
                                                         login):
    a, b = cluster(make_server, redis_server, 2, node_ttl=30)  # no help from the TTL
    alice = login(a, "alice")
    bob = login(b, "bob")
    alice.expect("* bob joined the group General")
    assert b.stop(signal.SIGTERM) == 0
    bob.read_until(lambda x: x == "* server shutting down")
    alice.expect("* bob left the group General")
    assert alice.request("users") == "users: alice"
    login(a, "bob")


def test_cluster_options_are_checked(redis_server, tmp_path):  # noqa: F811
    cases = [
        (["--workers", "2"], "--workers needs --redis"),
        (["--redis", "http://x"], "--redis must be redis://HOST:PORT/DB"),
        (["--redis", redis_server.url, "--node-id", "a b"], "--node-id must be"),
        (["--redis", redis_server.url, "--node-ttl", "0"], "--node-ttl must be"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSRV_")}
    for args, message in cases:
        result = subprocess.run([sys.executable, "-m", "chatsrv", "serve", "--port", "0", "--web-port", "0",
                                 "--data-dir", str(tmp_path), *args],
                                capture_output=True, text=True, timeout=30, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    # Redis not there: a clear one-line error, exit 1.
    result = subprocess.run([sys.executable, "-m", "chatsrv", "serve", "--port", "0", "--web-port", "0",
                             "--http-port", "0", "--data-dir", str(tmp_path),
                             "--redis", f"redis://127.0.0.1:{free_port()}/0"],
                            capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 1
    assert "error: cannot start: cannot reach Redis at" in result.stderr


def test_deleting_a_group_on_one_node_deletes_it_on_every_node(redis_server,  # noqa: F811
                                                               make_http_server, login):
    a, b, alice, bob = bob_in_ops(redis_server, make_http_server, login)
    assert alice.request("join ops") == "ok: joined group ops"
    bob.expect("* alice joined the group ops")
    alice.send("public ops from A")
    bob.expect("[public group ops from alice] from A")
    assert redis_server.command("HEXISTS", "chatsrv:groups", "ops") == b":1\r\n"
    # Deleted through node A: both members hear it, on their own nodes, no leave notices.
    assert a.api.call("DELETE", "/api/v1/groups/OPS") == (204, "")
    alice.expect("* group ops was deleted by an administrator")
    bob.expect("* group ops was deleted by an administrator")
    assert bob.request("groups") == "groups: General"
    assert bob.request("public ops hi") == "error: no such group: ops"
    assert b.api.get("/api/v1/groups/ops")[0] == 404
    assert redis_server.command("HEXISTS", "chatsrv:groups", "ops") == b":0\r\n"
    assert redis_server.command("EXISTS", "chatsrv:history:ops") == b":0\r\n"
    # The name is free cluster-wide; the new group starts with no history.
    assert bob.request("create ops") == "ok: created group ops"
    until(alice, "groups", lambda r: r == "groups: General ops")
    assert alice.request("join ops") == "ok: joined group ops"
    assert alice.request("history ops") == "ok: end of history ops"
    assert b.api.call("DELETE", "/api/v1/groups/general")[0] == 400


def test_a_node_back_from_a_pause_hands_the_name_over(redis_server, make_server,  # noqa: F811
                                                      login):
    """Node a stops (SIGSTOP) past its TTL: b reaps it, and the name alice is taken on b.
    When a runs again it registers its users again and loses alice to b: alice on a
    hears why, rather than a kick no administrator made."""
    a, b = cluster(make_server, redis_server, 2)
    alice = login(a, "alice")
    bob = login(b, "bob")
    alice.read_until(lambda x: x == "* bob joined the group General")
    os.kill(a.pid, signal.SIGSTOP)
    try:
        until(bob, "users", lambda r: r == "users: bob", wait=30)  # a was reaped
        login(b, "alice")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    seen = alice.read_until(lambda x: x.startswith("* disconnected"))
    assert seen[-1] == "* disconnected: logged in from another connection"
    assert alice.closed()


def test_public_messages_sent_during_an_outage_arrive_when_redis_is_back(
        redis_server, make_server, login):  # noqa: F811
    """Never a silent drop: what alice says while Redis is away reaches bob on the
    other node, in order, once both nodes are registered again."""
    a, b = cluster(make_server, redis_server, 2)
    alice = login(a, "alice")
    carol = login(a, "carol")
    bob = login(b, "bob")
    for client in (alice, carol):
        client.read_until(lambda x: x == "* bob joined the group General")
    redis_server.stop()
    until(alice, "users", lambda r: r == "error: cluster unavailable")
    alice.send("\n".join(f"public General held {i}" for i in range(30)))
    carol.read_until(lambda x: x == "[public group General from alice] held 29")
    redis_server.start()  # empty: both nodes register again, each in its own time
    bob.sock.settimeout(30)  # reconnecting backs off up to 5 s, on a busy machine more
    got = bob.read_until(lambda x: x == "[public group General from alice] held 29", limit=200)
    held = [x for x in got if x.startswith("[public group General from alice] held ")]
    assert held == [f"[public group General from alice] held {i}" for i in range(30)]
    # ... and alice was told nothing failed: her next reply is the pong.
    alice.send("ping")
    assert alice.read_until(lambda x: not x.startswith(("* ", "[")))[-1] == "ok: pong"
    alice.send("history General 30")
    lines = alice.read_until(lambda x: x.startswith("ok: end of history"))
    assert [m.group(3) for m in map(HISTORY.match, lines) if m] == [f"held {i}" for i in range(30)]


def test_redis_paused_no_public_message_is_dropped_silently(redis_server,  # noqa: F811
                                                            make_server, login):
    """Redis stopped with SIGSTOP: a message in flight when the node gives up on
    Redis either arrives or its sender hears `error: cluster unavailable`; the
    messages sent while the node knows Redis is away all arrive, in order, once."""
    a, b = cluster(make_server, redis_server, 2)
    alice = login(a, "alice")
    bob = login(b, "bob")
    alice.read_until(lambda x: x == "* bob joined the group General")
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        alice.send("public General in flight")
        deadline = time.monotonic() + 30
        while "cluster unavailable: Redis" not in a.log():
            assert time.monotonic() < deadline, "node a never noticed"
            time.sleep(0.05)
        alice.send("\n".join(f"public General held {i}" for i in range(20)) + "\nping")
        told = alice.read_until(lambda x: x == "ok: pong")  # they ran
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    got = bob.read_until(lambda x: x == "[public group General from alice] held 19", limit=500)
    said = [x.split("] ", 1)[1] for x in got if x.startswith("[public group General from alice]")]
    held = [x for x in said if x.startswith("held ")]
    assert held == [f"held {i}" for i in range(20)]
    alice.send("ping")
    told += alice.read_until(lambda x: x == "ok: pong")
    assert "in flight" in said or "error: cluster unavailable" in told

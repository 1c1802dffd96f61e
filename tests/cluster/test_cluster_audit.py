"""The audit log in cluster mode: one list in Redis (capped, newest first), so
`GET /api/v1/audit` on any node shows every node's entries."""

from __future__ import annotations

import time

from rediskit import redis_server  # noqa: F401 - the fixture
from test_cluster_accounts import eventually, node


def test_an_action_on_node_a_is_listed_by_node_b(redis_server, make_server):  # noqa: F811
    a, b = node(make_server, redis_server, 0), node(make_server, redis_server, 1)
    a.api.ok("POST", "/api/v1/accounts", {"name": "alice", "password": "correct-horse"})
    # accounts reach the other nodes within a second (PROTOCOL.md v2)
    eventually(lambda: [x["name"] for x in b.api.ok("GET", "/api/v1/accounts")["accounts"]]
               == ["alice"])
    b.api.ok("POST", "/api/v1/accounts/alice/suspend", {})
    a.api.ok("POST", "/api/v1/groups", {"name": "ops"})
    for server in (a, b):
        entries = server.api.ok("GET", "/api/v1/audit?limit=10")["entries"]
        assert [(e["actor"], e["action"], e["group"], e["target"]) for e in entries] == [
            ("admin", "group.create", "ops", None),
            ("admin", "account.suspend", None, "alice"),
            ("admin", "account.create", None, "alice"),
        ]
    only = b.api.ok("GET", "/api/v1/audit?group=OPS")["entries"]
    assert [e["action"] for e in only] == ["group.create"]
    assert b.api.ok("GET", "/api/v1/audit?limit=1")["entries"][0]["action"] == "group.create"


def test_admin_moderation_in_a_cluster_acts_on_every_node_and_is_audited(
        redis_server, make_server, connect):  # noqa: F811
    """The admin API's moderation goes through Redis like a user's: a ban made on
    node A removes a member connected to node B, holds there, and node B's audit
    lists it with the other node's settings change."""
    a, b = node(make_server, redis_server, 0), node(make_server, redis_server, 1)
    a.api.ok("POST", "/api/v1/groups", {"name": "lab"})
    gus = connect(b)
    gus.expect("enter a username:")
    gus.send("gus")
    gus.expect("connected! welcome gus", "you joined the group General")
    # the group made on A reaches B within a second (PROTOCOL.md v2)
    deadline = time.monotonic() + 10
    while True:
        gus.send("join lab")
        got = gus.read_until(lambda x: x.startswith(("ok: ", "error: ")))[-1]
        if got == "ok: joined group lab":
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.05)
    a.api.ok("POST", "/api/v1/groups/lab/ban", {"user": "gus", "reason": "spam"})
    gus.read_until(lambda x: x == "* admin removed you from lab: spam")
    gus.send("join lab")
    assert gus.read_until(lambda x: x.startswith("error: "))[-1] == \
        "error: not allowed: you are banned from lab"
    b.api.ok("POST", "/api/v1/groups/lab/settings", {"post": "moderators"})
    eventually(lambda: a.api.ok("GET", "/api/v1/groups/lab")["settings"]["post"] == "moderators")
    assert b.api.ok("GET", "/api/v1/groups/lab")["bans"]
    entries = b.api.ok("GET", "/api/v1/audit?group=lab")["entries"]
    assert [(e["actor"], e["action"], e["target"], e["detail"]) for e in entries][:2] == [
        ("admin", "set", None, "post moderators"),
        ("admin", "ban", "gus", "spam"),
    ]

"""The audit log in cluster mode: one list in Redis (capped, newest first), so
`GET /api/v1/audit` on any node shows every node's entries."""

from __future__ import annotations

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

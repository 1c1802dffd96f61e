"""RedisStore's accounts against a real redis-server (cluster mode's account storage)."""

from __future__ import annotations

import dataclasses

from rediskit import redis_server  # noqa: F401 - the fixture

from chatsrv.backplane.store import RedisStore
from chatsrv.core.accounts import Account


def test_accounts_round_trip_in_redis(redis_server):  # noqa: F811
    store = RedisStore(redis_server.url)
    alice = Account("Alice", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA", 10.5)
    assert store.add_account(alice)
    assert not store.add_account(Account("ALICE", "$argon2id$other", 11.0))  # one key
    changed = dataclasses.replace(alice, phc="$argon2id$new", generation=2, suspended=True)
    store.put_account(changed)
    store.record_logins([("alice", 99.25)])
    assert store.add_account(Account("bob", "$argon2id$b", 12.0))
    assert store.delete_account("bob") and not store.delete_account("bob")
    key = store.token_key(b"k" * 32)
    assert store.token_key(b"x" * 32) == key == b"k" * 32
    other = RedisStore(redis_server.url)  # another node
    assert other.load_accounts() == [dataclasses.replace(changed, last_login=99.25)]
    assert other.get_account("alice") == changed
    assert other.token_key(b"y" * 32) == b"k" * 32
    dump = b"".join(redis_server.command("HGETALL", "chatsrv:accounts").split())
    assert b"$argon2id$new" in dump
    store.close()
    other.close()

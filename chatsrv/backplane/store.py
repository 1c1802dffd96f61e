"""Cluster mode's store: groups and history in Redis, shared by every node.

It plugs into the same `StoreWriter` as SQLite (see chatsrv/store): `create`
reserves the name in the hub and this store's `create_group` decides it in
Redis, atomically across the cluster (another node's group of that name wins:
`GroupTaken`); public messages are appended every `--flush-ms` in one
pipeline, each group's list trimmed to `--history` (the cap). It runs on the
writer's thread, so it uses plain blocking redis-py sockets there.

An unreachable Redis raises `ClusterUnavailable`: `create` and `history`
answer `error: cluster unavailable`, and history batches stay unsaved in the
hub's rings and are retried by the writer, so a node's own messages of an
outage reach Redis when it is back (bounded by the ring size).
"""

from __future__ import annotations

import itertools
import json
import logging

from ..core.accounts import Account
from ..core.audit import REDIS_CAP, AuditEntry
from ..core.errors import ClusterUnavailable, GroupTaken
from ..core.moderation import document
from ..core.protocol import GENERAL, name_key, normalize
from ..store.base import Entry, GroupRecord, LoadedGroup, Store, StoreError
from . import conn, keys

log = logging.getLogger("chatsrv.backplane")


def _record(raw: bytes | str) -> GroupRecord:
    data = json.loads(raw)
    return GroupRecord(data["name"], data.get("by", ""), float(data.get("at", 0.0)),
                       data.get("owner"))


def _encode(record: GroupRecord) -> str:
    return keys.dumps({"name": record.name, "by": record.created_by, "at": record.created_at,
                       "owner": record.owner})


class RedisStore(Store):
    kind = "redis"
    durable = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.redis = conn.thread_client(url)

    def describe(self) -> str:
        return f"redis {conn.describe(self.url)}"

    def load(self, keep: int, budget: int | None = None) -> list[LoadedGroup]:
        """Every group of the cluster (General made if missing), each with its history."""
        try:
            self._create(GroupRecord(GENERAL, "", 0.0))
            groups = [_record(raw) for raw in self.redis.hgetall(keys.GROUPS).values()]
            if not keep:
                return [LoadedGroup(g) for g in groups]
            pipe = self.redis.pipeline(transaction=False)
            for group in groups:
                pipe.lrange(keys.history(name_key(group.name)), -keep, -1)
            lists = pipe.execute()
        except (ClusterUnavailable, *conn.ERRORS) as err:
            raise StoreError(f"cannot reach Redis at {conn.describe(self.url)}: {err}") from None
        return [LoadedGroup(g, [_entry(raw) for raw in entries])
                for g, entries in zip(groups, lists, strict=True)]

    def create_group(self, record: GroupRecord) -> None:
        existing = self._create(record)
        if existing is not None:
            raise GroupTaken(existing)

    def _create(self, record: GroupRecord) -> GroupRecord | None:
        message = keys.dumps({"type": "group", "name": record.name, "by": record.created_by,
                              "at": record.created_at, "owner": record.owner})
        try:
            raw = self.redis.eval(keys.CREATE_GROUP, 1, keys.GROUPS, name_key(record.name),
                                  _encode(record), keys.CTL, message)
        except conn.ERRORS as err:
            raise ClusterUnavailable(str(err)) from None
        return _record(raw) if raw else None

    def delete_group(self, name: str) -> bool:
        """Not on the server's path: a node deletes through its publisher
        (`RedisBackplane.delete_group`), in order with the messages it still sends,
        which would otherwise put the history list back. Kept for the Store contract."""
        key = name_key(name)
        try:
            self.redis.eval(keys.DELETE_GROUP, 3, keys.GROUPS, keys.history(key), keys.roles(key),
                            key,
                            keys.CTL, keys.dumps({"type": "delgroup", "node": "", "group": key}))
        except conn.ERRORS as err:
            raise ClusterUnavailable(str(err)) from None
        return True

    def append_history(self, batch: list[tuple[str, list[Entry]]], keep: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for name, entries in batch:
            key = keys.history(name_key(name))
            pipe.rpush(key, *(keys.dumps(list(e)) for e in entries))
            pipe.ltrim(key, -keep, -1)
        try:
            pipe.execute()
        except conn.ERRORS as err:
            raise ClusterUnavailable(str(err)) from None

    def read_history(self, name: str, count: int) -> list[Entry]:
        try:
            raw = self.redis.lrange(keys.history(name_key(name)), -count, -1)
        except conn.ERRORS as err:
            raise ClusterUnavailable(str(err)) from None
        return [_entry(r) for r in raw]

    # ------------------------------------------------------------ group roles

    def load_roles(self) -> list[tuple[str, str]]:
        """Every group's roles (its owner from its record, the rest from its roles
        hash) as the document `moderation.restore` takes."""
        try:
            groups = [_record(raw) for raw in self.redis.hgetall(keys.GROUPS).values()]
            pipe = self.redis.pipeline(transaction=False)
            for group in groups:
                pipe.hgetall(keys.roles(name_key(group.name)))
            hashes = pipe.execute()
        except conn.ERRORS as err:
            raise StoreError(f"cannot reach Redis at {conn.describe(self.url)}: {err}") from None
        return [(g.name, document(g.owner, decoded(h)))
                for g, h in zip(groups, hashes, strict=True) if g.owner is not None or h]

    # ------------------------------------------------------------ audit

    def append_audit(self, entries: list[AuditEntry]) -> None:
        """Newest first in one list shared by the cluster, capped at REDIS_CAP."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(keys.AUDIT, *(keys.dumps(e.as_dict()) for e in entries))
        pipe.ltrim(keys.AUDIT, 0, REDIS_CAP - 1)
        try:
            pipe.execute()
        except conn.ERRORS as err:
            raise ClusterUnavailable(str(err)) from None

    def read_audit(self, limit: int, group_key: str | None = None) -> list[AuditEntry]:
        try:
            raw = self.redis.lrange(keys.AUDIT, 0, (limit if group_key is None else 0) - 1)
        except conn.ERRORS as err:
            raise ClusterUnavailable(str(err)) from None
        entries = (AuditEntry.from_dict(json.loads(r)) for r in raw)
        if group_key is not None:  # the whole (capped) list, filtered here
            entries = (e for e in entries
                       if e.group is not None and name_key(normalize(e.group)) == group_key)
        return list(itertools.islice(entries, limit))

    # ------------------------------------------------------------ accounts

    def load_accounts(self) -> list[Account]:
        try:
            raw = self.redis.hgetall(keys.ACCOUNTS)
            logins = self.redis.hgetall(keys.ACCOUNT_LOGINS)
        except conn.ERRORS as err:
            raise StoreError(f"cannot reach Redis at {conn.describe(self.url)}: {err}") from None
        out = []
        for key, value in raw.items():
            last = logins.get(key)
            out.append(account_from_json(value, float(last) if last is not None else None))
        return out

    def get_account(self, key: str) -> Account | None:
        """One account as Redis has it now (another node changed it)."""
        try:
            value = self.redis.hget(keys.ACCOUNTS, key)
        except conn.ERRORS as err:
            raise ClusterUnavailable(str(err)) from None
        return None if value is None else account_from_json(value, None)

    def add_account(self, account: Account) -> bool:
        try:
            return bool(self.redis.hsetnx(keys.ACCOUNTS, account.key, account_json(account)))
        except conn.ERRORS as err:
            raise ClusterUnavailable(str(err)) from None

    def put_account(self, account: Account) -> None:
        try:
            self.redis.hset(keys.ACCOUNTS, account.key, account_json(account))
        except conn.ERRORS as err:
            raise ClusterUnavailable(str(err)) from None

    def delete_account(self, key: str) -> bool:
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hdel(keys.ACCOUNTS, key)
            pipe.hdel(keys.ACCOUNT_LOGINS, key)
            return bool(pipe.execute()[0])
        except conn.ERRORS as err:
            raise ClusterUnavailable(str(err)) from None

    def record_logins(self, logins: list[tuple[str, float]]) -> None:
        try:
            self.redis.hset(keys.ACCOUNT_LOGINS, mapping=dict(logins))
        except conn.ERRORS as err:
            raise ClusterUnavailable(str(err)) from None

    def token_key(self, fresh: bytes) -> bytes:
        try:
            self.redis.set(keys.TOKEN_KEY, fresh, nx=True)
            stored = self.redis.get(keys.TOKEN_KEY)
        except conn.ERRORS as err:
            raise StoreError(f"cannot reach Redis at {conn.describe(self.url)}: {err}") from None
        if stored is None:
            return fresh
        return stored.encode("latin-1") if isinstance(stored, str) else bytes(stored)

    def close(self) -> None:
        self.redis.close()


def account_json(account: Account) -> str:
    return keys.dumps({"name": account.name, "phc": account.phc, "at": account.created_at,
                       "gen": account.generation, "suspended": account.suspended})


def account_from_json(raw: bytes | str, last_login: float | None) -> Account:
    data = json.loads(raw)
    return Account(data["name"], data["phc"], float(data["at"]), int(data.get("gen", 0)),
                   bool(data.get("suspended", False)), last_login)


def _entry(raw: bytes | str) -> Entry:
    at, sender, text = json.loads(raw)
    return float(at), sender, text


def decoded(fields: dict) -> dict[str, str]:
    """A hash as redis-py returns it (bytes, see conn.py) as text."""
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                           else v)
            for k, v in fields.items()}

"""`--store memory`: nothing is kept; groups and history end with the process.

For tests, benchmarks and throw-away servers. The hub then answers `create`
at once and keeps history only in its in-memory ring.
"""

from __future__ import annotations

from collections import deque

from ..core.accounts import Account
from ..core.audit import REDIS_CAP, AuditEntry
from ..core.protocol import name_key, normalize
from .base import Entry, GroupRecord, LoadedGroup, Store


class MemoryStore(Store):
    kind = "memory"
    durable = False

    def __init__(self) -> None:
        # The audit log lives as long as the process, its newest REDIS_CAP entries.
        self.audit: deque[AuditEntry] = deque(maxlen=REDIS_CAP)

    def append_audit(self, entries: list[AuditEntry]) -> None:
        self.audit.extend(entries)

    def read_audit(self, limit: int, group_key: str | None = None) -> list[AuditEntry]:
        found: list[AuditEntry] = []
        for entry in reversed(self.audit):
            if len(found) >= limit:
                break
            if group_key is None or (entry.group is not None
                                     and name_key(normalize(entry.group)) == group_key):
                found.append(entry)
        return found

    def load(self, keep: int, budget: int | None = None) -> list[LoadedGroup]:
        return []

    def create_group(self, record: GroupRecord) -> None:
        pass

    def delete_group(self, name: str) -> bool:
        return True  # nothing kept: gone already

    def append_history(self, batch: list[tuple[str, list[Entry]]], keep: int) -> None:
        pass

    # Accounts live in the server's memory only, like everything here.

    def load_accounts(self) -> list[Account]:
        return []

    def add_account(self, account: Account) -> bool:
        return True

    def put_account(self, account: Account) -> None:
        pass

    def delete_account(self, key: str) -> bool:
        return True

    def record_logins(self, logins: list[tuple[str, float]]) -> None:
        pass

    def token_key(self, fresh: bytes) -> bytes:
        return fresh

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "memory (nothing is kept across restarts)"

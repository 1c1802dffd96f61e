"""`--store memory`: nothing is kept; groups and history end with the process.

For tests, benchmarks and throw-away servers. The hub then answers `create`
at once and keeps history only in its in-memory ring.
"""

from __future__ import annotations

from .base import Entry, GroupRecord, LoadedGroup, Store


class MemoryStore(Store):
    kind = "memory"
    durable = False

    def load(self, keep: int, budget: int | None = None) -> list[LoadedGroup]:
        return []

    def create_group(self, record: GroupRecord) -> None:
        pass

    def delete_group(self, name: str) -> bool:
        return True  # nothing kept: gone already

    def append_history(self, batch: list[tuple[str, list[Entry]]], keep: int) -> None:
        pass

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "memory (nothing is kept across restarts)"

"""The storage interface: what the server asks of a store, whatever keeps the data.

Every method is blocking and is called from one thread at a time: `open` and
`load` at start-up before the server listens, everything else from the
writer thread of `StoreWriter` (see `writer.py`), never from the event loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ..core.accounts import Account
from ..core.audit import AuditEntry

Entry = tuple[float, str, str]
"""A history entry: (UTC time in seconds, sender as logged in, message text)."""


class StoreError(Exception):
    """The store cannot be used; `str(err)` is one line for the operator."""


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """A group as kept: display name, creator ('' for General) and creation time."""

    name: str
    created_by: str
    created_at: float
    owner: str | None = None  # the creating account's key (group roles); None: no owner


@dataclass(slots=True)
class LoadedGroup:
    record: GroupRecord
    history: list[Entry] = field(default_factory=list)  # oldest first
    total: int = 0  # entries the store holds for the group (`history` are the newest)


class Store(ABC):
    """Groups and each group's last `keep` public messages."""

    kind: str = ""
    durable: bool = False  # False: nothing survives the process; the hub skips the journal

    @abstractmethod
    def load(self, keep: int, budget: int | None = None) -> list[LoadedGroup]:
        """Every kept group with its last `keep` history entries, oldest first;
        with a `budget` (bytes, see `hub.entry_size`), only the newest entries of
        the whole store that fit in it."""

    @abstractmethod
    def create_group(self, record: GroupRecord) -> None:
        """Commit a new group; returns only once it is durable."""

    @abstractmethod
    def delete_group(self, name: str) -> bool:
        """Forget a group (by display name) and all its history; returns only once
        that is durable: a restart must not bring it back. Used by the admin API's
        deletion and to undo a `create_group` whose creator was already told it
        failed (it took longer than `writer.CREATE_TIMEOUT_S`). False when the
        store did not have it."""

    @abstractmethod
    def append_history(self, batch: list[tuple[str, list[Entry]]], keep: int) -> None:
        """Append entries (group display name, entries oldest first) in one
        transaction; then drop all but each touched group's last `keep` entries."""

    def read_older(self, name: str, skip: int, count: int) -> list[Entry]:
        """The `count` entries of a group before its newest `skip`, oldest first
        (what `history` needs beyond the memory budget). A store that keeps no
        history has none."""
        return []

    # Group roles and moderation (PROTOCOL.md v2). Writer thread, like the rest.

    def put_roles(self, name: str, data: str) -> None:  # noqa: B027 (optional)
        """Group `name`'s roles and moderation (a JSON document), durably. Stores
        that keep none (memory, Redis so far) ignore it."""

    def load_roles(self) -> list[tuple[str, str]]:
        """(group name, roles document) of every group that has one."""
        return []

    # The audit log (PROTOCOL.md v2 "Audit and administration"). Writer thread.

    def append_audit(self, entries: list[AuditEntry]) -> None:  # noqa: B027 (optional)
        """Keep `entries` (oldest first). A store that keeps nothing ignores them."""

    def read_audit(self, limit: int, group_key: str | None = None) -> list[AuditEntry]:
        """The newest `limit` entries, newest first; only those of the group whose
        name key is `group_key` if given."""
        return []

    # Accounts. The server keeps every account in memory (logins never wait for
    # the disk); the store keeps them across restarts. Writer thread, like the rest.

    @abstractmethod
    def load_accounts(self) -> list[Account]:
        """Every account (start-up)."""

    @abstractmethod
    def add_account(self, account: Account) -> bool:
        """Add an account if none of its key exists; returns only once durable.
        False (nothing written) when the name is already an account's."""

    @abstractmethod
    def put_account(self, account: Account) -> None:
        """Replace an existing account's record (new hash, generation, suspension);
        returns only once durable."""

    @abstractmethod
    def delete_account(self, key: str) -> bool:
        """Forget an account; returns only once durable. False when unknown."""

    @abstractmethod
    def record_logins(self, logins: list[tuple[str, float]]) -> None:
        """Note each account's (key, time) last login; batched, not fsynced."""

    @abstractmethod
    def token_key(self, fresh: bytes) -> bytes:
        """The installation's token key: the stored one, or `fresh` stored now."""

    @abstractmethod
    def close(self) -> None:
        """Finish writing and release the data directory."""

    def describe(self) -> str:
        return self.kind

"""The audit log's entries (PROTOCOL.md v2 "Audit and administration"): what the
core emits, what the stores keep and `GET /api/v1/audit` shows.

The core appends an `AuditEntry` to `Hub.audit` when a moderation command (or
its admin API equivalent) has changed something; the transport drains the list
(`ChatServer.save_audit`) and the store writes it on its writer thread, never
on the event loop. Account changes made by an administrator are recorded by
the admin API the same way (`account.create`, ...).

Administrators act as the user `ADMIN_ACTOR` (`admin`): the name members see in
notices (`* admin removed you from class`) and the audit's `actor`. Its session
is no real one: `ADMIN_ACCOUNT` is a key no account can have (names hold no
control character), and `Group.rank` gives it the owner's powers on every group.
"""

from __future__ import annotations

from dataclasses import dataclass

ADMIN_ACTOR = "admin"
ADMIN_ACCOUNT = "\0admin"

MODERATION = ("set", "mod", "unmod", "invite", "uninvite", "kick", "ban", "unban", "mute",
              "unmute")
"""The actions `chatsrv_moderation_total{action}` counts (the commands' words)."""

ACCOUNT_ACTIONS = ("account.create", "account.delete", "account.password",
                   "account.suspend", "account.unsuspend")

REDIS_CAP = 10_000
"""Entries the cluster's audit list keeps (newest); SQLite keeps every entry."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One recorded action. `group`, `target` and `detail` are None where they do
    not apply; `detail` holds the reason, the minutes or `<key> <value>`."""

    at: float
    actor: str
    action: str
    group: str | None
    target: str | None
    detail: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"at": self.at, "actor": self.actor, "action": self.action,
                "group": self.group, "target": self.target, "detail": self.detail}

    @classmethod
    def from_dict(cls, doc: dict[str, object]) -> AuditEntry:
        def text(key: str) -> str | None:
            value = doc.get(key)
            return None if value is None else str(value)

        at = doc.get("at", 0.0)
        return cls(float(at) if isinstance(at, (int, float, str)) else 0.0,
                   str(doc.get("actor", "")), str(doc.get("action", "")),
                   text("group"), text("target"), text("detail"))

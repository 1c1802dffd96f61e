"""Helpers for driving the hub without sockets: a settable clock and a user's
queued lines (imported by the unit tests, as tests/cluster/rediskit.py is)."""

from __future__ import annotations

from chatsrv.core.model import User


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lines(user: User) -> list[str]:
    """Everything queued for `user` so far, then forget it (like a flush)."""
    out = b"".join(user.queue).decode().splitlines()
    user.queue.clear()
    return out

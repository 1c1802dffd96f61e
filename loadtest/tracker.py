"""Bookkeeping that turns deliveries into pass/fail: pure data structures, no I/O.

One Locust process runs many users in one interpreter, so senders and receivers
of that process can share these objects directly. Across distributed workers
only the per-receiver sequence check applies (see docs/loadtesting.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

# (kind, target, sender, seq): identifies one message. target is the group for
# public messages and the receiver for private ones.
MsgKey = tuple[str, str, str, int]


class SequenceChecker:
    """Per receiver: the last sequence number seen per (kind, target, sender).

    The first message seen from a stream starts it (a receiver may join a group
    mid-stream); after that each must be exactly one more than the last.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str, str], int] = {}

    def check(self, kind: str, target: str, sender: str, seq: int) -> str | None:
        """None if in order, else a short reason (kept generic so Locust groups it)."""
        key = (kind, target.casefold(), sender.casefold())
        last = self._last.get(key)
        if last is None or seq == last + 1:
            self._last[key] = seq
            return None
        if seq <= last:
            return "out of order or duplicated"
        self._last[key] = seq
        return "gap in sequence (earlier message missing)"

    def forget_target(self, kind: str, target: str) -> None:
        """Drop streams of a group the receiver left, so a later rejoin starts afresh."""
        t = target.casefold()
        for key in [k for k in self._last if k[0] == kind and k[1] == t]:
            del self._last[key]


@dataclass
class _Pending:
    deadline: float
    receivers: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Missing:
    kind: str
    target: str
    sender: str
    seq: int
    receiver: str


class PendingDeliveries:
    """Deliveries a sender expects its process's receivers to see before a deadline."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._msgs: dict[MsgKey, _Pending] = {}

    def __len__(self) -> int:
        return len(self._msgs)

    def expect(self, key: MsgKey, receivers: Iterable[str], now: float) -> None:
        wanted = {r.casefold() for r in receivers}
        if wanted:
            self._msgs[_norm(key)] = _Pending(now + self.timeout, wanted)

    def cancel(self, key: MsgKey) -> None:
        """The send failed: nobody should expect it."""
        self._msgs.pop(_norm(key), None)

    def delivered(self, key: MsgKey, receiver: str) -> None:
        k = _norm(key)
        entry = self._msgs.get(k)
        if entry is not None:
            entry.receivers.discard(receiver.casefold())
            if not entry.receivers:
                del self._msgs[k]

    def forget_receiver(self, receiver: str) -> None:
        """The receiver is leaving: what is still in flight to it is not owed any more."""
        r = receiver.casefold()
        for k in list(self._msgs):
            entry = self._msgs[k]
            entry.receivers.discard(r)
            if not entry.receivers:
                del self._msgs[k]

    def forget_group(self, group: str, receiver: str) -> None:
        """The receiver left one group: public messages in flight there are not owed."""
        g, r = group.casefold(), receiver.casefold()
        for k in [k for k in self._msgs if k[0] == "public" and k[1] == g]:
            entry = self._msgs[k]
            entry.receivers.discard(r)
            if not entry.receivers:
                del self._msgs[k]

    def overdue(self, now: float) -> list[Missing]:
        """Remove and return every (message, receiver) past its deadline."""
        late = [k for k, e in self._msgs.items() if e.deadline <= now]
        out = []
        for k in late:
            for r in sorted(self._msgs.pop(k).receivers):
                out.append(Missing(k[0], k[1], k[2], k[3], r))
        return out

    def clear(self) -> None:
        self._msgs.clear()


def _norm(key: MsgKey) -> MsgKey:
    kind, target, sender, seq = key
    return (kind, target.casefold(), sender.casefold(), seq)


class GroupDirectory:
    """Which of this process's users are members of which group (confirmed by the server)."""

    def __init__(self) -> None:
        self._members: dict[str, set[str]] = {}

    def add(self, group: str, user: str) -> None:
        self._members.setdefault(group.casefold(), set()).add(user.casefold())

    def remove(self, group: str, user: str) -> None:
        self._members.get(group.casefold(), set()).discard(user.casefold())

    def remove_user(self, user: str) -> None:
        u = user.casefold()
        for members in self._members.values():
            members.discard(u)

    def members(self, group: str) -> set[str]:
        return set(self._members.get(group.casefold(), ()))

    def clear(self) -> None:
        self._members.clear()


class PairRegistry:
    """Pairs private-message users of one process; an unpaired user waits for the next."""

    def __init__(self) -> None:
        self._partner: dict[str, str] = {}
        self._waiting: list[str] = []
        self._gone: set[str] = set()

    def partner(self, user: str) -> str | None:
        """The user's partner, pairing it with a waiting user if it has none."""
        if user in self._partner:
            return self._partner[user]
        others = [w for w in self._waiting if w != user]
        if others:
            other = others[0]
            self._waiting.remove(other)
            if user in self._waiting:
                self._waiting.remove(user)
            self._partner[user], self._partner[other] = other, user
            return other
        if user not in self._waiting:
            self._waiting.append(user)
        return None

    def leave(self, user: str) -> None:
        """Unpair the user; its former partner goes back to waiting on its next call."""
        self._gone.add(user.casefold())
        if user in self._waiting:
            self._waiting.remove(user)
        other = self._partner.pop(user, None)
        if other is not None:
            self._partner.pop(other, None)

    def is_gone(self, user: str) -> bool:
        """True for a user that left on purpose, so `no such user` for it is expected."""
        return user.casefold() in self._gone

    def clear(self) -> None:
        self._partner.clear()
        self._waiting.clear()
        self._gone.clear()

"""Helpers for driving the hub without sockets: a settable clock, a user's
queued lines, and `Chat`, a logged-in user driven like tests/conftest.py's
socket `Client` (imported by the unit tests, as tests/cluster/rediskit.py is)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from chatsrv.core.hub import Hub
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


class Chat:
    """A user logged in on `hub`, with the socket client's reading API: what the
    hub queued for it is read line by line, exactly as the flush would send it.

    `send` runs each LF-separated line through `Hub.handle` (the session's job
    after framing); `exit` logs the user out, as the session does."""

    def __init__(self, hub: Hub, name: str) -> None:
        self.hub = hub
        self.user = hub.login(name)
        self.name = self.user.name
        self.pending: deque[str] = deque()
        self.gone = False
        self.expect(f"connected! welcome {self.name}", "you joined the group General")

    def _take(self) -> None:
        queue = self.user.queue
        if queue:
            data = b"".join(queue)
            queue.clear()
            assert data.endswith(b"\n"), data
            self.pending.extend(data.decode().split("\n")[:-1])

    def send(self, text: str) -> None:
        assert not self.gone, f"{self.name} has exited"
        for line in text.split("\n"):
            if self.hub.handle(self.user, line):
                self.hub.logout(self.user)
                self.gone = True
                return

    def read_line(self) -> str:
        self._take()
        assert self.pending, f"{self.name}: nothing queued"
        return self.pending.popleft()

    def request(self, line: str) -> str:
        self.send(line)
        return self.read_line()

    def expect(self, *want: str) -> None:
        for line in want:
            got = self.read_line()
            assert got == line, f"{self.name}: expected {line!r}, got {got!r}"

    def read_until(self, predicate: Callable[[str], bool]) -> list[str]:
        seen = []
        while True:
            seen.append(self.read_line())
            if predicate(seen[-1]):
                return seen

    def sync(self) -> None:
        """Forget what was queued so far (the socket client reads up to a pong)."""
        self._take()
        self.pending.clear()

    def quiet(self) -> None:
        """Assert nothing is queued for this user since its last read."""
        self._take()
        assert not self.pending, f"{self.name}: unexpected {list(self.pending)}"


def quiet(*chats: Chat) -> None:
    for chat in chats:
        chat.quiet()

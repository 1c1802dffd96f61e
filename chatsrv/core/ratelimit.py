"""Token-bucket pacing for one session's reading, with an injected clock.

It never drops: `take` answers how long to wait before the next line may be
handled, and the session sleeps that long, so a flooder is slowed, not cut.
"""

from __future__ import annotations

from collections.abc import Callable


class RateLimiter:
    __slots__ = ("rate", "burst", "tokens", "stamp", "clock")

    def __init__(self, rate: float, clock: Callable[[], float], burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else 2 * rate
        self.tokens = self.burst
        self.clock = clock
        self.stamp = clock()

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled to its burst by `now` (it then says
        nothing a fresh bucket would not)."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst - 1e-9

    def give_back(self, n: int = 1) -> None:
        """Return `n` tokens that `take` spent for nothing (never above the burst)."""
        self.tokens = min(self.burst, self.tokens + n)

    def take(self, n: int = 1) -> float:
        """Spend `n` tokens; return the seconds to wait so the bucket is not overdrawn."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

"""`--create-rate`: groups created per minute per client address, with an injected clock.

A token bucket per address (`limits.address_key`: an IPv4 address or an IPv6
/64), not per session, so reconnecting does not refill it, and addresses in
`--exempt` are limited too (the exemption is about connection counts, and a
proxy's clients creating groups through it are still one crowd). Pure: the
hub asks `take(key)` in `create` once every other check passed, and gives the
token back (`refund`) if the store then fails, so a failed create costs nothing.

Memory: an entry only differs from no entry while its bucket is not full, at
most `burst / rate` seconds (120 s with the defaults) after its last create.
Entries are capped at `max_entries`; when the cap is reached, full buckets are
dropped, and if that frees too little the least recently used tenth goes (those
addresses start again with a full bucket: lenient, never wrong against anyone else).
"""

from __future__ import annotations

from collections.abc import Callable

from .ratelimit import RateLimiter

MAX_ENTRIES = 10_000


class CreateRate:
    __slots__ = ("rate", "burst", "clock", "max_entries", "entries")

    def __init__(self, per_minute: float, clock: Callable[[], float], *,
                 burst: float | None = None, max_entries: int = MAX_ENTRIES) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive (0 = off is no CreateRate at all)")
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = burst if burst is not None else max(2 * per_minute, 1.0)
        self.clock = clock
        self.max_entries = max_entries
        # key -> its bucket; insertion order is last-use order (`take` re-inserts).
        self.entries: dict[str, RateLimiter] = {}

    def retune(self, per_minute: float) -> None:
        """A new rate (a reload): every bucket refills at it, up to the new burst."""
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.rate = per_minute / 60.0
        self.burst = max(2 * per_minute, 1.0)
        for bucket in self.entries.values():
            bucket.rate = self.rate
            bucket.burst = self.burst
            bucket.tokens = min(bucket.tokens, self.burst)

    def take(self, key: str) -> bool:
        """Spend one creation for `key`: True if allowed, False if over the rate
        (a refused attempt spends nothing)."""
        bucket = self.entries.pop(key, None)
        if bucket is None:
            if len(self.entries) >= self.max_entries:
                self.purge()
            bucket = RateLimiter(self.rate, self.clock, self.burst)
        self.entries[key] = bucket
        if bucket.take() > 0:
            bucket.give_back()
            return False
        return True

    def refund(self, key: str) -> None:
        """A creation `take` allowed did not happen (the store failed): give it back."""
        bucket = self.entries.get(key)
        if bucket is not None:
            bucket.give_back()

    def purge(self, now: float | None = None) -> None:
        """Drop full buckets; if under a tenth of the cap went, the least recently used too."""
        if now is None:
            now = self.clock()
        entries = self.entries
        for key in [k for k, bucket in entries.items() if bucket.full(now)]:
            del entries[key]
        excess = len(entries) - self.max_entries * 9 // 10
        if excess > 0:
            for key in list(entries)[:excess]:
                del entries[key]

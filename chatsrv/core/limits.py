"""Per-address connection limits: how many at once, how many per second.

Pure accounting with an injected clock, so it is unit-tested without sockets
or sleeping. The server asks `admit(key)` for each accepted socket (before any
per-session allocation) and calls `release(key)` when that connection ends.

An "address" is an IPv4 address, or an IPv6 client's /64 network: one host
commonly holds a whole /64, so counting single IPv6 addresses would let it
open 2^64 times the limit (Ergo counts IPv6 the same way). IPv4-mapped IPv6
addresses (`::ffff:10.0.0.1`, seen on a dual-stack `::` listener) are the IPv4
address they map.

Memory: an entry exists while its address has a connection open, and at most
`burst / rate` (2 s) longer while its rate bucket refills; then it is dropped.
So entries never exceed the open connections (at most `--max-clients`) plus
the addresses whose last connection ended in the last 2 s. The once-a-minute
log state is likewise kept one minute per address refused, no longer.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections import deque
from collections.abc import Callable

log = logging.getLogger("chatsrv.limits")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Refusals of one address are logged at most once per this many seconds.
LOG_EVERY_S = 60.0

PER_IP = "per_ip"
RATE = "rate"


def parse_networks(spec: str) -> tuple[Network, ...]:
    """`--exempt`: comma-separated addresses or CIDR networks; '' means none.

    Raises ValueError naming the bad item."""
    networks = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"not an address or CIDR network: {item!r}") from None
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
            mapped = net.network_address.ipv4_mapped
            if mapped is not None:  # ::ffff:10.0.0.0/104 is 10.0.0.0/8
                net = ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}", strict=False)
        networks.append(net)
    return tuple(networks)


@functools.lru_cache(maxsize=4096)  # twice per login (limits, create-rate): parsed once
def address_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The peer's address, IPv4-mapped IPv6 turned into IPv4; raises ValueError."""
    addr = ipaddress.ip_address(host)
    if addr.version == 6:
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return mapped
        if addr.scope_id:
            addr = ipaddress.IPv6Address(addr.packed)
    return addr


def address_key(host: str) -> str:
    """The address a peer counts as, whatever the exemptions: its IPv4 address or
    IPv6 /64 (see above); a host that is not an IP address counts as itself."""
    try:
        return _key_of(address_of(host))
    except ValueError:
        return host


def _key_of(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if addr.version == 6:
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)


class _Entry:
    __slots__ = ("count", "tokens", "stamp")

    def __init__(self, burst: float, now: float) -> None:
        self.count = 0
        self.tokens = burst
        self.stamp = now


class _Logged:
    __slots__ = ("at", "suppressed", "reason")

    def __init__(self, at: float, reason: str) -> None:
        self.at = at
        self.suppressed = 0
        self.reason = reason


class AddressLimits:
    """Open connections and a connect-rate token bucket per address.

    `max_per_ip` 0 and `rate` 0 turn each check off; `exempt` addresses are
    never counted (their `key` is None)."""

    def __init__(self, *, max_per_ip: int, rate: float, exempt: tuple[Network, ...],
                 clock: Callable[[], float]) -> None:
        self.max_per_ip = max_per_ip
        self.rate = rate
        self.burst = max(2 * rate, 1.0)  # a slow rate still lets one connection through
        # Seconds an idle entry needs to refill its bucket from empty: it is
        # kept that long after its last connection ends, then dropped.
        self.refill_s = self.burst / rate if rate else 0.0
        self.exempt = exempt
        self.clock = clock
        self.on = bool(max_per_ip or rate)
        self.entries: dict[str, _Entry] = {}
        self._idle: deque[tuple[float, str]] = deque()  # (drop after, key), in time order
        self._logged: dict[str, _Logged] = {}
        self._log_expiry: deque[tuple[float, str]] = deque()
        self.refused = 0

    def configure(self, *, max_per_ip: int, rate: float, exempt: tuple[Network, ...]) -> None:
        """New limits (a reload). Connections already counted are released under the
        keys they were admitted with; newly exempt addresses are no longer counted
        for new connections, and buckets refill at the new rate up to the new burst."""
        self.max_per_ip = max_per_ip
        self.rate = rate
        self.burst = max(2 * rate, 1.0)
        self.refill_s = self.burst / rate if rate else 0.0
        self.exempt = exempt
        self.on = bool(max_per_ip or rate)
        for entry in self.entries.values():
            entry.tokens = min(entry.tokens, self.burst)

    # ------------------------------------------------------------ accounting

    def key(self, host: str) -> str | None:
        """The address an accepted peer counts as, or None if it is exempt or limits are off."""
        if not self.on:
            return None
        try:
            addr = address_of(host)
        except ValueError:  # not an IP (a UNIX socket?): nothing to count
            return None
        for net in self.exempt:
            if addr in net:
                return None
        return _key_of(addr)

    def admit(self, key: str) -> str | None:
        """Take one connection for `key`: None if admitted, else the refusal reason."""
        now = self.clock()
        self.purge(now)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = _Entry(self.burst, now)
        if self.max_per_ip and entry.count >= self.max_per_ip:
            return self._refuse(key, PER_IP, now)
        if self.rate:
            tokens = min(self.burst, entry.tokens + (now - entry.stamp) * self.rate)
            entry.stamp = now
            if tokens < 1.0:
                entry.tokens = tokens
                return self._refuse(key, RATE, now)
            entry.tokens = tokens - 1.0
        entry.count += 1
        return None

    def release(self, key: str) -> None:
        """One connection of `key` ended."""
        now = self.clock()
        entry = self.entries.get(key)
        if entry is None:  # cannot happen: admitted keys keep their entry while count > 0
            return
        entry.count -= 1
        if entry.count <= 0:
            entry.count = 0
            if self._full(entry, now):
                del self.entries[key]
            else:
                self._idle.append((now + self.refill_s, key))
        self.purge(now)

    def purge(self, now: float | None = None) -> None:
        """Drop idle entries whose bucket is full again, and expired log state."""
        if now is None:
            now = self.clock()
        idle = self._idle
        while idle and idle[0][0] <= now:
            _, key = idle.popleft()
            entry = self.entries.get(key)
            if entry is not None and entry.count == 0 and self._full(entry, now):
                del self.entries[key]
        expiry = self._log_expiry
        while expiry and expiry[0][0] <= now:
            _, key = expiry.popleft()
            logged = self._logged.get(key)
            if logged is not None and logged.at + LOG_EVERY_S <= now:
                del self._logged[key]
                if logged.suppressed:
                    log.warning("refused %d more connections from %s (%s) in the last minute",
                                logged.suppressed, key, logged.reason)

    def _full(self, entry: _Entry, now: float) -> bool:
        if not self.rate:
            return True
        return entry.tokens + (now - entry.stamp) * self.rate >= self.burst - 1e-9

    # ------------------------------------------------------------ logging

    def _refuse(self, key: str, reason: str, now: float) -> str:
        self.refused += 1
        logged = self._logged.get(key)
        if logged is not None:
            logged.suppressed += 1
            logged.reason = reason
            return reason
        self._logged[key] = _Logged(now, reason)
        self._log_expiry.append((now + LOG_EVERY_S, key))
        if reason == PER_IP:
            why = f"{self.max_per_ip} connections open (--max-per-ip {self.max_per_ip})"
        else:
            why = f"over {self.rate:g} new connections/s (--connect-rate {self.rate:g})"
        log.warning("refusing connections from %s: %s; logged once a minute per address",
                    key, why)
        return reason


def _forwarded_address(item: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """One X-Forwarded-For entry as an address (`[v6]:port` and `v4:port` accepted);
    None when it is not one (`unknown`, an obfuscated node name, garbage)."""
    item = item.strip().strip('"')
    if item.startswith("["):  # [2001:db8::1]:443
        item = item[1:].split("]", 1)[0]
    elif item.count(":") == 1:  # 192.0.2.1:443
        item = item.split(":", 1)[0]
    try:
        return address_of(item)
    except ValueError:
        return None


def in_networks(host: str, networks: tuple[Network, ...]) -> bool:
    """Whether address `host` is in one of `networks` (False for a non-address)."""
    if not networks:
        return False
    try:
        addr = address_of(host)
    except ValueError:
        return False
    return any(addr in net for net in networks)


def client_address(peer: str, forwarded_for: str | None,
                   trusted: tuple[Network, ...]) -> str:
    """The client's address for a connection from `peer` (an IP address) that
    carried `forwarded_for` (the X-Forwarded-For headers, joined by commas).

    Only a peer inside `trusted` (--trusted-proxies) is believed. Its list is
    read from the right: each address that is itself a trusted proxy is a hop
    to skip, and the first one that is not is the client (the standard way:
    everything left of it was written by the client and may be forged). If
    every entry is a trusted proxy, the leftmost is the client; an entry that
    is not an address stops the walk at the last trusted hop. Returned in the
    form `address_of` gives (IPv4-mapped IPv6 as IPv4)."""
    if not forwarded_for or not in_networks(peer, trusted):
        return peer
    hop = address_of(peer)
    for item in reversed(forwarded_for.split(",")):
        addr = _forwarded_address(item)
        if addr is None:
            break
        hop = addr
        if not any(addr in net for net in trusted):
            break
    return str(hop)

"""What a reload (SIGHUP, `POST /api/v1/reload`) may change while everyone stays connected.

Pure: `reload_plan` compares the running Config with the one just read and
says what changes now and what waits for a restart; the server applies it
(server.py `ChatServer.reload`). Live: the TLS certificate and key (new
handshakes use the new pair, established sessions keep theirs), the log level
and format, the connection limits (`max_clients`, `max_unauth`, `max_per_ip`,
`connect_rate`, `exempt`, `trusted_proxies` for new web
connections), the per-session limits (`rate_limit`, every session
at once; `max_line`, `sendq`; `login_timeout` and `keepalive` for new
connections), `notice_limit`, `max_groups`, `create_rate`, `history` (a new
size for every group's ring, but not turning history on or off: that changes
what the store is asked to keep and whether the command exists),
`history_memory`, `shutdown_grace`, `token_ttl` (tokens minted from then on;
those already given keep their expiry). `accounts` (the mode) needs a restart,
as do the others: they are sockets, files or state laid
out at start; they keep their running value and are reported as needing a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from .config import Config
from .configfile import redacted
from .core.ratelimit import RateLimiter

LIVE = frozenset({
    "tls_cert", "tls_key", "log_level", "log_format",
    "max_clients", "max_unauth", "max_per_ip", "connect_rate", "exempt",
    "trusted_proxies", "rate_limit", "max_line", "sendq", "login_timeout", "keepalive",
    "notice_limit", "max_groups", "create_rate", "history", "history_memory",
    "shutdown_grace", "token_ttl",
})
# The internal --reuse-port is neither: it is never in a file.
RESTART = frozenset(f.name for f in fields(Config)) - LIVE - {"reuse_port"}


@dataclass(frozen=True)
class Plan:
    effective: Config  # the new config, with the restart-only settings still the running ones
    changed: tuple[str, ...]  # "name: old -> new", applied now
    restart_needed: tuple[str, ...]  # "name: running -> in the file", not applied


def reload_plan(old: Config, new: Config) -> Plan:
    changed: list[str] = []
    restart: list[str] = []
    keep: dict[str, Any] = {}
    tls_switch = old.tls != new.tls  # TLS on or off changes what the port speaks
    for f in fields(Config):
        name = f.name
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        line = f"{name}: {_value(name, before)} -> {_value(name, after)}"
        if name in RESTART or (tls_switch and name in ("tls_cert", "tls_key")) or (
                name == "history" and not (before and after)):  # on or off: a restart
            restart.append(line)
            keep[name] = before
        elif name in LIVE:
            changed.append(line)
    effective = replace(new, **keep) if keep else new
    return Plan(effective, tuple(changed), tuple(restart))


def _value(name: str, value: Any) -> str:
    return redacted(name, value) or "(not set)"


def retune(limiter: RateLimiter | None, rate: float,
           clock: Callable[[], float] | None = None) -> RateLimiter | None:
    """A session's line limiter for a new --rate-limit (0 = none), keeping its bucket."""
    if not rate:
        return None
    if limiter is None:
        import time

        return RateLimiter(rate, clock or time.monotonic)
    limiter.rate = rate
    limiter.burst = 2 * rate
    limiter.tokens = min(limiter.tokens, limiter.burst)
    return limiter

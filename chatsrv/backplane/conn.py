"""redis-py on the gevent loop, without monkey-patching the process.

The server is not monkey-patched (the single-node path owes nothing to Redis),
so redis-py's stdlib sockets would block the whole event loop. Instead the
event-loop side uses `GeventConnection`, a redis-py `Connection` whose socket
is a gevent socket: a command waits in its own greenlet while the loop goes on
serving clients. redis-py's pool lock is a `threading.Lock`, held only around
list operations that never switch greenlets, so it never blocks the loop.

The store side (`RedisStore`) runs in the store's writer thread and uses plain
blocking sockets there, as redis-py expects. docs/scaling.md has the figures
that decided this (gevent sockets vs a thread hand-off per command).
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import redis
from gevent import socket as gsocket
from redis.backoff import NoBackoff
from redis.retry import Retry

CONNECT_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 5.0


class GeventConnection(redis.connection.Connection):
    """A redis-py TCP connection over a cooperative gevent socket."""

    def _connect(self):
        sock = gsocket.create_connection((self.host, self.port), self.socket_connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.settimeout(self.socket_timeout)
        return sock


def check_url(url: str) -> str | None:
    """Why `--redis` cannot be used, or None."""
    parsed = urlparse(url)
    if parsed.scheme != "redis":
        return "--redis must be redis://HOST:PORT/DB"
    try:
        parsed.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "--redis has a bad port"
    if not parsed.hostname:
        return "--redis needs a host: redis://HOST:PORT/DB"
    return None


def _options() -> dict:
    # No retries inside redis-py: the backplane notices the outage, tells clients,
    # and reconnects with its own backoff.
    return dict(socket_timeout=COMMAND_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0), decode_responses=False)


def loop_client(url: str) -> redis.Redis:
    """For greenlets on the event loop: gevent sockets."""
    pool = redis.ConnectionPool.from_url(url, connection_class=GeventConnection, **_options())
    return redis.Redis(connection_pool=pool)


def thread_client(url: str) -> redis.Redis:
    """For a worker thread (the store writer): plain blocking sockets."""
    return redis.Redis.from_url(url, **_options())


def describe(url: str) -> str:
    """The URL without a password, for logs."""
    parsed = urlparse(url)
    host = parsed.hostname or "?"
    return f"redis://{host}:{parsed.port or 6379}{parsed.path or '/0'}"


ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
"""What an unreachable (or restarting) Redis raises."""

"""Password hashing off the event loop: a small pool of OS threads for argon2id.

argon2-cffi releases the GIL while it hashes, so the loop keeps serving
everyone else. The pool is separate from gevent's default threadpool (DNS
lookups use that one) and as large as the machine has cores: more threads would
not hash faster, only hold more 19 MiB argon2 buffers at once; logins beyond
that wait their turn in the queue (their own greenlets wait, nobody else).
"""

from __future__ import annotations

import os
import threading

from gevent.threadpool import ThreadPool

from .. import passwords

# Hashing threads run at a lower priority than the event loop's thread (Linux
# schedules threads as tasks, so a thread can be niced on its own): when the
# machine is busy the loop preempts a hash, so a burst of password logins slows
# the logins themselves, not everyone's chat (PROTOCOL.md v2: no client waits
# more than 20 ms while 50 password logins are checked).
HASH_NICE = 10
_niced = threading.local()


def _lower_priority() -> None:
    if getattr(_niced, "done", False):
        return
    _niced.done = True
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICE)
    except (OSError, AttributeError):  # not Linux, or not allowed: run as is
        pass


def _verify(phc: str, password: str) -> bool:
    _lower_priority()
    return passwords.verify_password(phc, password)


def _hash(password: str) -> str:
    _lower_priority()
    return passwords.hash_password(password)


class Hasher:
    def __init__(self, threads: int | None = None) -> None:
        self.pool = ThreadPool(threads or max(1, min(4, os.cpu_count() or 1)))

    def verify(self, phc: str, password: str) -> bool:
        """Blocks the calling greenlet only."""
        return bool(self.pool.apply(_verify, (phc, password)))

    def hash(self, password: str) -> str:
        return str(self.pool.apply(_hash, (password,)))

    def close(self) -> None:
        self.pool.kill()

"""Password hashing off the event loop: a small pool of OS threads for argon2id.

argon2-cffi releases the GIL while it hashes, so the loop keeps serving
everyone else. The pool is separate from gevent's default threadpool (DNS
lookups use that one) and as large as the machine has cores: more threads would
not hash faster, only hold more 19 MiB argon2 buffers at once; logins beyond
that wait their turn in the queue (their own greenlets wait, nobody else).
"""

from __future__ import annotations

import os

from gevent.threadpool import ThreadPool

from .. import passwords


class Hasher:
    def __init__(self, threads: int | None = None) -> None:
        self.pool = ThreadPool(threads or max(1, min(4, os.cpu_count() or 1)))

    def verify(self, phc: str, password: str) -> bool:
        """Blocks the calling greenlet only."""
        return bool(self.pool.apply(passwords.verify_password, (phc, password)))

    def hash(self, password: str) -> str:
        return str(self.pool.apply(passwords.hash_password, (password,)))

    def close(self) -> None:
        self.pool.kill()

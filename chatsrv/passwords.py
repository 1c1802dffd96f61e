"""argon2id password hashes (argon2-cffi): blocking calls, never on the event loop.

The server runs `hash_password` / `verify_password` on gevent's threadpool (the
C code releases the GIL, so two run at once on two cores). Parameters: OWASP's
Password Storage Cheat Sheet minimum for argon2id, m = 19 MiB, t = 2, p = 1,
measured on the 2-core test machine in docs/benchmarks.md ("Password logins").
RFC 9106's "second recommended" low-memory profile (m = 64 MiB, t = 3, p = 4)
managed about 4.5 verifications/s there, far below the 30 logins/s a class
logging in at once needs. A stored hash carries its parameters (the PHC
string); a login with a hash made with other parameters rehashes it.
"""

from __future__ import annotations

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

TIME_COST = 2
MEMORY_KIB = 19 * 1024
PARALLELISM = 1

_hasher = PasswordHasher(
    time_cost=TIME_COST, memory_cost=MEMORY_KIB, parallelism=PARALLELISM, type=Type.ID
)


def hash_password(password: str) -> str:
    """A new PHC string (`$argon2id$v=19$m=...`) with a fresh random salt."""
    return _hasher.hash(password)


def verify_password(phc: str, password: str) -> bool:
    """Whether `password` matches; False for a wrong one and for a damaged hash."""
    try:
        return _hasher.verify(phc, password)
    except VerifyMismatchError:
        return False
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(phc: str) -> bool:
    """Whether a matching hash was made with other parameters than today's."""
    try:
        return _hasher.check_needs_rehash(phc)
    except (InvalidHashError, ValueError):
        return True

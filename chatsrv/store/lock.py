"""One server per data directory: an exclusive `flock` on `<data-dir>/chatsrv.lock`.

The kernel drops the lock when the process dies (even by `kill -9`), so a
stale lock file never blocks a restart. The file holds the owner's PID, only
to make the refusal message useful.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .base import StoreError

LOCK_NAME = "chatsrv.lock"


class DirLock:
    def __init__(self, directory: Path, purpose: str = "a chatsrv server") -> None:
        self.path = directory / LOCK_NAME
        self.purpose = purpose
        self.fd: int | None = None

    def acquire(self) -> DirLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise StoreError(f"cannot use data directory {self.path.parent}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_pid(fd)
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                who = f" (pid {holder})" if holder else ""
                raise StoreError(
                    f"data directory {self.path.parent} is in use by another process{who}; "
                    "two servers never share one directory"
                ) from None
            raise StoreError(f"cannot lock {self.path}: {err.strerror}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""

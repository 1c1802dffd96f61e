"""The admin API's bearer token: where it comes from, and checking it.

There is no open mode. The token is `--admin-token` / `CHATSRV_ADMIN_TOKEN`;
without one, the server makes a random token at its first start and keeps it
in `<data-dir>/admin.token` (mode 0600), which later starts and `chatsrv-admin`
on the same machine read. Exposing the HTTP port beyond loopback needs a token
given explicitly, of at least ADMIN_TOKEN_MIN characters (checked in `Config`),
so nobody publishes an admin API whose secret they never saw or can guess.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger("chatsrv.auth")

TOKEN_FILE = "admin.token"
ADMIN_TOKEN_MIN = 16
"""Characters an operator's `--admin-token` needs when the HTTP port listens beyond
loopback (a generated token has 43)."""


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP literals; any other host name counts as exposed."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_path(data_dir: Path) -> Path:
    return Path(data_dir) / TOKEN_FILE


def load_or_create_token(data_dir: Path) -> str:
    """The token kept in the data directory, made (0600, atomically) on first use."""
    path = token_path(data_dir)
    try:
        return _read_token(path)
    except FileNotFoundError:
        pass
    Path(data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it between our read and create
        return _read_token(path)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("admin token generated in %s (mode 0600)", path)
    return token


def _read_token(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise OSError(f"{path} is empty: delete it to get a new token, or put one in it")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s is readable by others (mode %03o); chmod 600 it", path, mode)
    log.info("admin token read from %s", path)
    return token


def bearer_ok(header: str | None, token: str) -> bool:
    """Constant-time check of an `Authorization: Bearer <token>` header."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())

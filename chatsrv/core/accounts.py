"""Accounts policy, sans-I/O: passwords' rules, tokens, and login throttling.

Nothing here hashes a password (that is argon2id on a worker thread, outside the
core) nor reads a clock (every time is an argument): the login flow asks these
functions what to do and does it.

Tokens (`token` command, PROTOCOL.md v2 "Accounts") are stateless and cheap to
check: ``ct1.<expiry>.<mac>`` where ``expiry`` is a Unix time in base 36 and
``mac`` is HMAC-SHA256, truncated to 24 bytes and base64url-encoded, over the
account's key (its casefolded name), its creation time, its *generation* and
the expiry. The generation is a number kept with the account and bumped by a
password change, a reset and a suspension, so every token minted before stops
working with no list of tokens to keep; the creation time makes a token of a
deleted account useless for an account created later under the same name. The
HMAC key is per installation (kept in the data directory, or in Redis for a
cluster); rotating it revokes every token.

Throttling: three failed logins on one connection close it; five failed
logins (a wrong password or a token that does not verify) for one account within
15 minutes, from any connection, refuse password logins to that account for 15
minutes after the fifth, the right password too. Tokens are never refused by the throttle, and nothing locks an
account for good.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import unicodedata
from collections import deque
from dataclasses import dataclass

PASSWORD_MIN = 8
PASSWORD_MAX = 256

TOKEN_PREFIX = "ct1."
TOKEN_MAC_BYTES = 24
KEY_BYTES = 32

CONNECTION_FAILURES = 3  # the third failed login on one connection closes it
ACCOUNT_FAILURES = 5  # this many failures for one account within the window ...
ACCOUNT_WINDOW_S = 15 * 60.0
COOL_OFF_S = 15 * 60.0  # ... refuse password logins to it for this long


@dataclass(frozen=True, slots=True)
class Account:
    """An account as kept by the store. `phc` is the argon2id hash (PHC string)."""

    name: str  # as first written (NFC), the name its user logs in with
    phc: str
    created_at: float
    generation: int = 0
    suspended: bool = False
    last_login: float | None = None

    @property
    def key(self) -> str:
        return account_key(self.name)


def account_key(name: str) -> str:
    """How accounts are looked up: names compare case-insensitively (the same key
    as `protocol.name_key`, so an account and a user of one name meet)."""
    return unicodedata.normalize("NFC", name.casefold())


def password_problem(password: str) -> str | None:
    """Why a password is refused (`error: invalid password: <reason>`), or None."""
    if len(password) < PASSWORD_MIN:
        return f"too short (at least {PASSWORD_MIN} characters)"
    if len(password) > PASSWORD_MAX:
        return f"too long (at most {PASSWORD_MAX} characters)"
    for ch in password:
        if ch == " " or ch == "\t":
            return "spaces and tabs are not allowed"
        if ch < " " or "\x7f" <= ch <= "\x9f" or ch in "\u2028\u2029":
            return "control characters are not allowed"
    return None


# ------------------------------------------------------------------------ tokens


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _mac(key: bytes, account: Account, expiry: int) -> bytes:
    msg = f"{account.key}\0{account.created_at!r}\0{account.generation}\0{expiry}"
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()[:TOKEN_MAC_BYTES]


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def mint_token(key: bytes, account: Account, now: float, ttl: float) -> str:
    """A token for `account`, valid until `now + ttl` (printable ASCII, no spaces)."""
    expiry = int(now + ttl)
    return f"{TOKEN_PREFIX}{_base36(expiry)}.{_b64(_mac(key, account, expiry))}"


def looks_like_token(secret: str) -> bool:
    """Whether a login secret has a token's shape (a password may too; then it is
    tried as a password when it does not verify as a token)."""
    return secret.startswith(TOKEN_PREFIX) and secret.count(".") == 2


def token_valid(key: bytes, account: Account, token: str, now: float) -> bool:
    """Whether `token` was minted for this account (same creation, same generation)
    with this key and has not expired. Constant time in the MAC."""
    if not looks_like_token(token) or len(token) > 80:
        return False
    _, expiry_text, mac_text = token.split(".")
    try:
        expiry = int(expiry_text, 36)
        mac = base64.urlsafe_b64decode(mac_text + "=" * (-len(mac_text) % 4))
    except (ValueError, binascii.Error):
        return False
    if expiry <= now or len(mac) != TOKEN_MAC_BYTES:
        return False
    return hmac.compare_digest(mac, _mac(key, account, expiry))


# -------------------------------------------------------------------- throttling


class LoginThrottle:
    """Failed password logins per account, over a sliding 15-minute window.

    Memory is bounded by the caller: only failures for existing accounts are
    recorded (an unknown name costs nothing), at most ACCOUNT_FAILURES times per
    account, and `sweep` forgets accounts whose window and cool-off are over."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}
        self._until: dict[str, float] = {}  # account key -> end of its cool-off

    def throttled(self, key: str, now: float) -> bool:
        """Whether password logins to this account are refused right now."""
        until = self._until.get(key)
        if until is None:
            return False
        if now < until:
            return True
        del self._until[key]
        return False

    def failed(self, key: str, now: float) -> bool:
        """Record a failed login to an existing account; True when this one starts
        a cool-off."""
        times = self._failures.get(key)
        if times is None:
            times = self._failures[key] = deque(maxlen=ACCOUNT_FAILURES)
        while times and times[0] <= now - ACCOUNT_WINDOW_S:
            times.popleft()
        times.append(now)
        if len(times) >= ACCOUNT_FAILURES:
            times.clear()
            self._until[key] = now + COOL_OFF_S
            return True
        return False

    def cool_off(self, key: str, until: float) -> None:
        """Another node started a cool-off for this account (cluster)."""
        if until > self._until.get(key, 0.0):
            self._until[key] = until

    def forget(self, key: str) -> None:
        """The account is gone or its password was reset by an administrator."""
        self._failures.pop(key, None)
        self._until.pop(key, None)

    def sweep(self, now: float) -> None:
        """Drop what can no longer matter (run now and then, e.g. once a minute)."""
        for key in [k for k, t in self._failures.items() if not t or t[-1] <= now - ACCOUNT_WINDOW_S]:
            del self._failures[key]
        for key in [k for k, until in self._until.items() if until <= now]:
            del self._until[key]

    def __len__(self) -> int:
        return len(self._failures) + len(self._until)

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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .names import skeleton
from .protocol import (
    LOGIN_FAILED,
    TOO_MANY_FAILURES,
    name_key,
    suspended_line,
    throttled_line,
    username_taken,
)

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
        return name_key(self.name)




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


# ------------------------------------------------------------------- the book


class Mode:
    """`--accounts`: the three modes of PROTOCOL.md v2."""

    OFF = "off"
    OPTIONAL = "optional"
    REQUIRED = "required"
    ALL = (OFF, OPTIONAL, REQUIRED)



# What `AccountBook.begin` / `checked` tell the login flow to do next.


@dataclass(frozen=True, slots=True)
class Guest:
    """Log in without an account (the v1 login)."""

    name: str


@dataclass(frozen=True, slots=True)
class AskPassword:
    """Send `password for <name>:` and read the next line as the secret."""

    name: str


@dataclass(frozen=True, slots=True)
class CheckPassword:
    """Run `verify(phc, password)` off the event loop, then call `checked`.
    `account` is None for an unknown name in `required` mode: the flow verifies
    against a dummy hash all the same, so the answer takes as long as for a real
    account and does not reveal whether it exists."""

    name: str
    account: Account | None
    phc: str
    password: str


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """The login succeeded; `how` is "password" or "token" (the metric's result)."""

    account: Account
    how: str


@dataclass(frozen=True, slots=True)
class Refused:
    """Send `line`; `result` is the metric's result ("failed", "throttled", or "" for
    a refusal that is not a failed login, such as a suspended account)."""

    line: str
    result: str


LoginStep = Guest | AskPassword | CheckPassword | LoggedIn | Refused

# The PHC string verified for names that are no account (required mode): real
# parameters, so the time matches; no password matches it (any salt will do).
DUMMY_PHC = (
    "$argon2id$v=19$m=19456,t=2,p=1$ZHVtbXktc2FsdC1kdW1teQ$"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
)


class AccountBook:
    """Every account, in memory, and the login decisions (PROTOCOL.md v2 Accounts).

    The store keeps the accounts across restarts and the backplane across nodes;
    both report into `put`/`drop`. No method blocks or hashes."""

    def __init__(self, mode: str, token_key: bytes = b"", token_ttl: float = 30 * 86400.0,
                 accounts: list[Account] | tuple[Account, ...] = ()) -> None:
        if mode not in Mode.ALL:
            raise ValueError(f"accounts mode must be one of {', '.join(Mode.ALL)}, not {mode!r}")
        self.mode = mode
        self.token_key = token_key
        self.token_ttl = token_ttl
        self.accounts: dict[str, Account] = {}
        # Look-alike names (PROTOCOL.md v2): skeleton (core/names.py) -> the key of
        # the account that has it. An entry counts only while that account exists
        # (see `lookalike`), so a missed removal never refuses a free name.
        self.skels: dict[str, str] = {}
        for account in accounts:
            self.put(account)
        self.throttle = LoginThrottle()
        # Told of every failed login to an existing account (the cluster counts them
        # on every node); failures other nodes report go to `throttle.failed` directly.
        self.on_failure: Callable[[str, float], None] | None = None

    # -- the register of accounts

    def get(self, name: str) -> Account | None:
        return self.accounts.get(name_key(name))

    def put(self, account: Account) -> None:
        self.accounts[account.key] = account
        skel = skeleton(account.name)
        if self.skels.get(skel) not in self.accounts:
            self.skels[skel] = account.key

    def drop(self, key: str) -> Account | None:
        self.throttle.forget(key)
        account = self.accounts.pop(key, None)
        if account is not None:
            skel = skeleton(account.name)
            if self.skels.get(skel) == key:
                del self.skels[skel]
        return account

    def lookalike(self, name: str) -> Account | None:
        """Another account (not `name`'s own) whose name looks like `name`: same
        skeleton, different key. Such a name is taken: no account of it can be
        created and no guest may log in with it."""
        skel = skeleton(name)
        key = self.skels.get(skel)
        if key is None or key == name_key(name):
            return None
        account = self.accounts.get(key)
        if account is None:
            del self.skels[skel]
        return account

    def __len__(self) -> int:
        return len(self.accounts)

    @property
    def enabled(self) -> bool:
        return self.mode != Mode.OFF

    # -- login

    def split(self, line: str) -> tuple[str, str | None]:
        """The username prompt's line: `name` or the one-line `name secret` (the
        first space separates them). With accounts off a space is just part of an
        (invalid) name, as in version 1."""
        if self.mode == Mode.OFF or " " not in line:
            return line, None
        name, secret = line.split(" ", 1)
        return name, secret

    def begin(self, name: str, secret: str | None, now: float) -> LoginStep:
        """A valid, free name was given at the prompt, with or without a secret."""
        if self.mode == Mode.OFF:
            return Guest(name)
        account = self.get(name)
        if account is None and self.mode == Mode.OPTIONAL:
            if secret is not None:
                return Refused(LOGIN_FAILED, "failed")
            if self.lookalike(name) is not None:  # an account's look-alike is no guest's
                return Refused(username_taken(name), "")
            return Guest(name)
        if secret is None:
            return AskPassword(name)
        return self.secret(name, secret, now)

    def secret(self, name: str, secret: str, now: float) -> LoginStep:
        """The password (or token) for `name`, given on its own line or inline."""
        account = self.get(name)
        if account is not None and looks_like_token(secret):
            if token_valid(self.token_key, account, secret, now):
                if account.suspended:
                    return Refused(suspended_line(name), "")
                return LoggedIn(account, "token")
            # Not a valid token: it may still be the password, tried below.
        if account is not None and self.throttle.throttled(account.key, now):
            return Refused(throttled_line(name), "throttled")
        if account is None and self.mode == Mode.OPTIONAL:
            return Refused(LOGIN_FAILED, "failed")
        phc = DUMMY_PHC if account is None else account.phc
        return CheckPassword(name, account, phc, secret)

    def checked(self, check: CheckPassword, ok: bool, now: float) -> LoggedIn | Refused:
        """The answer of the off-loop verification of `check`."""
        account = check.account
        if account is None:
            return Refused(LOGIN_FAILED, "failed")
        current = self.accounts.get(account.key)
        if not ok or current is None or current.phc != account.phc \
                or current.created_at != account.created_at:
            # Wrong, or the account changed while the hash ran (deleted, password reset).
            if current is not None:
                self.throttle.failed(current.key, now)
                if self.on_failure is not None:
                    self.on_failure(current.key, now)
            return Refused(LOGIN_FAILED, "failed")
        if current.suspended:
            return Refused(suspended_line(check.name), "")
        return LoggedIn(current, "password")

    def mint(self, account: Account, now: float) -> str:
        return mint_token(self.token_key, account, now, self.token_ttl)


class LoginAttempts:
    """One connection's failed logins: the third closes it."""

    __slots__ = ("failures",)

    def __init__(self) -> None:
        self.failures = 0

    def refused(self, step: Refused) -> tuple[str, bool]:
        """The line to send for a refusal and whether to close the connection after it."""
        if step.result not in ("failed", "throttled"):
            return step.line, False
        self.failures += 1
        if self.failures >= CONNECTION_FAILURES:
            return TOO_MANY_FAILURES, True
        return step.line, False


# ------------------------------------------------------- work for the transport


@dataclass(frozen=True, slots=True)
class Register:
    """`register <password>`: hash it off the loop, store the account, then answer
    `ok: registered <name>` (or why not) through `AccountService`."""

    user: object  # the hub's User (kept opaque: core.accounts knows no model)
    name: str
    password: str


@dataclass(frozen=True, slots=True)
class ChangePassword:
    """`password <old> <new>`: verify the old one off the loop, then hash the new."""

    user: object
    name: str
    old: str
    new: str


AccountWork = Register | ChangePassword

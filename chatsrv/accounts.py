"""Account changes that need a hash or the disk: create, register, password, reset,
suspend, delete. The decisions are in core/accounts.py; this runs them.

Every method blocks only the calling greenlet (an admin API request's, or the
session's that sent `register`/`password`): hashing runs on the hasher's
threads, writes on the store's writer thread (fsynced before the method
returns, so an answer is a promise), and the in-memory book is updated last,
on the loop. Errors are `AccountError`s whose text is the reply or the API's
message.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

from .core import protocol as P
from .core.accounts import Account, AccountBook, password_problem
from .core.errors import ClusterUnavailable
from .core.names import reserved, skeleton

log = logging.getLogger("chatsrv.accounts")

GENERATED_PASSWORD_BYTES = 15  # token_urlsafe: 20 characters (the API promises >= 16)


class AccountError(Exception):
    """`str(err)` is one line for the user or the administrator."""


class Exists(AccountError):
    pass


class NotFound(AccountError):
    pass


class Invalid(AccountError):
    pass


class Unavailable(AccountError):
    """The store (or Redis, in a cluster) failed: nothing was changed."""


class Hashing(Protocol):
    def hash(self, password: str) -> str: ...
    def verify(self, phc: str, password: str) -> bool: ...


class AccountStore(Protocol):
    def add_account(self, account: Account) -> bool: ...
    def put_account(self, account: Account) -> None: ...
    def delete_account(self, key: str) -> bool: ...


class AccountService:
    def __init__(self, book: AccountBook, hasher: Hashing, store: AccountStore,
                 on_writer: Callable[..., Any],
                 end_session: Callable[[str, bytes, str], None],
                 clock: Callable[[], float] = time.time,
                 on_change: Callable[[str], None] = lambda key: None) -> None:
        self.book = book
        self.hasher = hasher
        self.store = store
        self._on_writer = on_writer  # runs a store call on the writer thread and waits
        self.end_session = end_session  # (account name, last line, reason)
        self.clock = clock
        self.on_change = on_change  # (account key): the other nodes reload it

    @property
    def enabled(self) -> bool:
        return self.book.enabled

    def all(self) -> list[Account]:
        return list(self.book.accounts.values())

    # -- helpers

    def on_writer(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A store call on the writer thread; its failure is an `Unavailable`."""
        try:
            return self._on_writer(fn, *args)
        except ClusterUnavailable:
            raise Unavailable(P.CLUSTER_UNAVAILABLE) from None
        except Exception as err:
            log.error("account change not stored: %s", err)
            raise Unavailable(P.ACCOUNT_NOT_STORED) from None

    def _name(self, name: str) -> str:
        nfc = P.normalize(name)
        problem = P.name_problem(nfc)
        if problem is not None:
            raise Invalid(f"invalid name: {problem}")
        return nfc

    def _password(self, password: str | None) -> tuple[str, bool]:
        """The password to set and whether it was generated."""
        if password is None:
            return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES), True
        problem = password_problem(password)
        if problem is not None:
            raise Invalid(f"invalid password: {problem}")
        return password, False

    def find(self, name: str) -> Account:
        account = self.book.get(P.normalize(name))
        if account is None:
            raise NotFound(f"no such account: {name}")
        return account

    # -- creating

    def create(self, name: str, password: str | None = None) -> tuple[Account, str | None]:
        """A new account (admin API); the generated password when none was given."""
        nfc = self._name(name)
        existing = self.book.get(nfc) or self.book.lookalike(nfc)
        if existing is not None:
            raise Exists(f"account exists: {existing.name}")
        if reserved(skeleton(nfc)):
            raise Invalid(f"invalid name: {nfc} is reserved for administrators")
        clear, generated = self._password(password)
        account = Account(nfc, self.hasher.hash(clear), self.clock())
        self._add(account)
        return account, clear if generated else None

    def register(self, name: str, password: str) -> Account:
        """A guest's `register <password>`: its name becomes an account."""
        problem = password_problem(password)
        if problem is not None:
            raise Invalid(P.invalid_password_line(problem))
        if self.book.get(name) is not None or self.book.lookalike(name) is not None:
            raise Exists(P.already_registered_line(name))
        account = Account(name, self.hasher.hash(password), self.clock())
        try:
            self._add(account)
        except Exists:
            raise Exists(P.already_registered_line(name)) from None
        return account

    def _add(self, account: Account) -> None:
        # The hash took a while: an administrator (or another guest) may have been faster.
        book = self.book
        if book.get(account.name) is not None or book.lookalike(account.name) is not None \
                or not self.on_writer(self.store.add_account, account):
            existing = book.get(account.name) or book.lookalike(account.name)
            raise Exists(f"account exists: {existing.name if existing else account.name}")
        self.book.put(account)
        self.on_change(account.key)

    # -- changing

    def change_password(self, name: str, old: str, new: str) -> None:
        """A user's `password <old> <new>`; every token of the account stops working."""
        account = self.find(name)
        if not self.hasher.verify(account.phc, old):
            raise Invalid(P.WRONG_PASSWORD)
        problem = password_problem(new)
        if problem is not None:
            raise Invalid(P.invalid_password_line(problem))
        self._replace(account, phc=self.hasher.hash(new))

    def reset(self, name: str, password: str | None = None) -> tuple[Account, str | None]:
        """An administrator sets a new password (generated when none is given)."""
        account = self.find(name)
        clear, generated = self._password(password)
        account = self._replace(account, phc=self.hasher.hash(clear))
        self.book.throttle.forget(account.key)
        return account, clear if generated else None

    def rehash(self, account: Account, password: str) -> None:
        """After a login with a hash of older parameters: store today's (tokens live on)."""
        current = self.book.get(account.name)
        if current is None or current.phc != account.phc:
            return
        updated = dataclasses.replace(current, phc=self.hasher.hash(password))
        if self.book.get(account.name) == current:
            self.on_writer(self.store.put_account, updated)
            self.book.put(updated)
            self.on_change(updated.key)

    def suspend(self, name: str, suspended: bool = True) -> Account:
        """Suspend (ends its session, voids its tokens) or unsuspend an account."""
        account = self.find(name)
        if suspended:
            account = self._replace(account, suspended=True)
            self.end_session(account.name, P.KICKED, "kicked")
        elif account.suspended:
            account = self._replace(account, suspended=False, bump=False)
        return account

    def _replace(self, account: Account, *, bump: bool = True, **changes: Any) -> Account:
        current = self.book.get(account.name)
        if current is None:
            raise NotFound(f"no such account: {account.name}")
        generation = current.generation + 1 if bump else current.generation
        updated = dataclasses.replace(current, generation=generation, **changes)
        self.on_writer(self.store.put_account, updated)
        self.book.put(updated)
        self.on_change(updated.key)
        return updated

    def delete(self, name: str) -> Account:
        """Forget an account; its session ends as after a kick."""
        account = self.find(name)
        self.on_writer(self.store.delete_account, account.key)
        self.book.drop(account.key)
        self.on_change(account.key)
        self.end_session(account.name, P.KICKED, "kicked")
        return account

"""The accounts policy (chatsrv.core.accounts) and the argon2id wrapper, without sockets."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatsrv import passwords
from chatsrv.core.accounts import (
    ACCOUNT_FAILURES,
    ACCOUNT_WINDOW_S,
    COOL_OFF_S,
    DUMMY_PHC,
    Account,
    AccountBook,
    AskPassword,
    CheckPassword,
    Guest,
    LoggedIn,
    LoginAttempts,
    LoginThrottle,
    Refused,
    looks_like_token,
    mint_token,
    password_problem,
    token_valid,
)

KEY = bytes(range(32))
ALICE = Account("Alice", "$argon2id$dummy", created_at=1_700_000_000.25)
DAY = 86400.0
NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short", "too short (at least 8 characters)"),
        ("x" * 257, "too long (at most 256 characters)"),
        ("has space", "spaces and tabs are not allowed"),
        ("has\ttabss", "spaces and tabs are not allowed"),
        ("bell\x07bell", "control characters are not allowed"),
        ("del\x7fdeldel", "control characters are not allowed"),
        ("line\u2028sep", "control characters are not allowed"),
    ],
)
def test_bad_passwords_have_a_reason(password, reason):
    assert password_problem(password) == reason


@pytest.mark.parametrize("password", ["x" * 8, "x" * 256, "correct-horse", "пароль-долгий", "密码密码密码密码"])
def test_good_passwords(password):
    assert password_problem(password) is None


def test_token_round_trip_and_shape():
    token = mint_token(KEY, ALICE, NOW, 30 * DAY)
    assert looks_like_token(token)
    assert token.isascii() and token.isprintable() and " " not in token
    assert token_valid(KEY, ALICE, token, NOW + 29 * DAY)
    # Names compare case-insensitively: the token belongs to the account, not the spelling.
    assert token_valid(KEY, dataclasses.replace(ALICE, name="alice"), token, NOW)


def test_token_expires():
    token = mint_token(KEY, ALICE, NOW, 60)
    assert token_valid(KEY, ALICE, token, NOW + 59)
    assert not token_valid(KEY, ALICE, token, NOW + 60)


def test_token_dies_with_generation_key_account_and_recreation():
    token = mint_token(KEY, ALICE, NOW, DAY)
    assert not token_valid(KEY, dataclasses.replace(ALICE, generation=1), token, NOW)
    assert not token_valid(bytes(32), ALICE, token, NOW)
    assert not token_valid(KEY, dataclasses.replace(ALICE, name="bob"), token, NOW)
    # Deleted and created again under the same name: a new creation time.
    assert not token_valid(KEY, dataclasses.replace(ALICE, created_at=ALICE.created_at + 1), token, NOW)


def test_forged_tokens_fail():
    token = mint_token(KEY, ALICE, NOW, DAY)
    prefix, expiry, mac = token.split(".")
    later = int(expiry, 36) + 10 * DAY
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    n, s = int(later), ""
    while n:
        n, r = divmod(n, 36)
        s = digits[r] + s
    assert not token_valid(KEY, ALICE, f"{prefix}.{s}.{mac}", NOW)  # expiry moved
    flipped = ("A" if mac[0] != "A" else "B") + mac[1:]
    assert not token_valid(KEY, ALICE, f"{prefix}.{expiry}.{flipped}", NOW)
    for junk in ["", "ct1.", "ct1..", "ct1.zz.!!", "ct1.-5.abc", "ct1." + "z" * 200 + ".a", "correct-horse"]:
        assert not token_valid(KEY, ALICE, junk, NOW)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_token_check_never_raises(text):
    assert token_valid(KEY, ALICE, text, NOW) is False


def test_throttle_after_five_failures_within_the_window():
    throttle = LoginThrottle()
    t = NOW
    for i in range(ACCOUNT_FAILURES - 1):
        assert not throttle.failed("alice", t + i)
        assert not throttle.throttled("alice", t + i)
    assert throttle.failed("alice", t + 10)  # the fifth starts the cool-off
    assert throttle.throttled("alice", t + 10)
    assert throttle.throttled("alice", t + 10 + COOL_OFF_S - 1)
    assert not throttle.throttled("alice", t + 10 + COOL_OFF_S)  # never a permanent lock
    assert not throttle.throttled("bob", t + 10)


def test_failures_spread_beyond_the_window_do_not_throttle():
    throttle = LoginThrottle()
    step = ACCOUNT_WINDOW_S / (ACCOUNT_FAILURES - 1) + 1
    for i in range(ACCOUNT_FAILURES * 3):
        assert not throttle.failed("alice", NOW + i * step)
    assert not throttle.throttled("alice", NOW + ACCOUNT_FAILURES * 3 * step)


def test_sweep_forgets_what_no_longer_matters():
    throttle = LoginThrottle()
    for i in range(ACCOUNT_FAILURES):
        throttle.failed("alice", NOW + i)
    throttle.failed("bob", NOW)
    assert len(throttle) == 3  # alice's (emptied) window, her cool-off, bob's window
    throttle.sweep(NOW + max(ACCOUNT_WINDOW_S, COOL_OFF_S) + 10)
    assert len(throttle) == 0


def test_cool_off_from_another_node_and_forget():
    throttle = LoginThrottle()
    throttle.cool_off("alice", NOW + 100)
    assert throttle.throttled("alice", NOW)
    throttle.forget("alice")
    assert not throttle.throttled("alice", NOW)


def test_argon2id_hash_verify_and_rehash():
    phc = passwords.hash_password("correct-horse")
    assert phc.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert "correct-horse" not in phc
    assert passwords.verify_password(phc, "correct-horse")
    assert not passwords.verify_password(phc, "wrong-horse!")
    assert not passwords.verify_password("not a hash", "correct-horse")
    assert not passwords.needs_rehash(phc)
    weaker = "$argon2id$v=19$m=8192,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$" + "A" * 43
    assert passwords.needs_rehash(weaker)


# ------------------------------------------------------------------ the account book

def book(mode: str, *accounts: Account) -> AccountBook:
    return AccountBook(mode, KEY, 30 * DAY, list(accounts))


def test_dummy_hash_costs_like_a_real_one_and_matches_nothing():
    assert not passwords.needs_rehash(DUMMY_PHC)  # today's parameters: same time
    assert not passwords.verify_password(DUMMY_PHC, "correct-horse")


def test_off_mode_is_version_1():
    b = book("off", ALICE)
    assert b.split("alice secret") == ("alice secret", None)  # an invalid name, as before
    assert b.begin("alice", None, NOW) == Guest("alice")


def test_optional_mode_guests_and_accounts():
    b = book("optional", ALICE)
    assert b.split("alice correct-horse") == ("alice", "correct-horse")
    assert b.begin("bob", None, NOW) == Guest("bob")
    assert b.begin("bob", "some-password", NOW) == Refused("error: login failed", "failed")
    assert b.begin("alice", None, NOW) == AskPassword("alice")
    step = b.begin("ALICE", "correct-horse", NOW)
    assert step == CheckPassword("ALICE", ALICE, ALICE.phc, "correct-horse")
    assert b.checked(step, True, NOW) == LoggedIn(ALICE, "password")
    assert b.checked(step, False, NOW) == Refused("error: login failed", "failed")


def test_required_mode_never_reveals_whether_an_account_exists():
    b = book("required", ALICE)
    assert b.begin("nobody", None, NOW) == AskPassword("nobody")
    step = b.begin("nobody", "whatever-pw", NOW)
    assert isinstance(step, CheckPassword) and step.account is None and step.phc == DUMMY_PHC
    assert b.checked(step, True, NOW) == Refused("error: login failed", "failed")


def test_token_login_and_token_shaped_password():
    b = book("optional", ALICE)
    token = b.mint(ALICE, NOW)
    assert b.begin("alice", token, NOW + 1) == LoggedIn(ALICE, "token")
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert isinstance(b.begin("alice", forged, NOW + 1), CheckPassword)  # may be the password


def test_throttle_blocks_passwords_not_tokens_and_expires():
    b = book("optional", ALICE)
    token = b.mint(ALICE, NOW)
    for i in range(5):
        step = b.begin("alice", "wrong-password", NOW + i)
        assert isinstance(step, CheckPassword)
        assert b.checked(step, False, NOW + i).result == "failed"
    assert b.begin("alice", "correct-horse", NOW + 10) == Refused(
        "error: too many failed logins for alice, try again later", "throttled")
    assert b.begin("alice", token, NOW + 10) == LoggedIn(ALICE, "token")
    assert isinstance(b.begin("alice", "correct-horse", NOW + 4 + COOL_OFF_S), CheckPassword)


def test_suspended_account_after_the_right_secret_only():
    suspended = dataclasses.replace(ALICE, suspended=True)
    b = book("optional", suspended)
    step = b.begin("alice", "correct-horse", NOW)
    assert b.checked(step, False, NOW) == Refused("error: login failed", "failed")
    assert b.checked(step, True, NOW) == Refused("error: account suspended: alice", "")
    token = mint_token(KEY, suspended, NOW, DAY)
    assert b.begin("alice", token, NOW) == Refused("error: account suspended: alice", "")


def test_account_changed_while_hashing_fails_the_login():
    b = book("optional", ALICE)
    step = b.begin("alice", "correct-horse", NOW)
    assert isinstance(step, CheckPassword)
    b.put(dataclasses.replace(ALICE, phc="$argon2id$reset", generation=1))
    assert b.checked(step, True, NOW) == Refused("error: login failed", "failed")
    step = b.begin("alice", "correct-horse", NOW)
    assert isinstance(step, CheckPassword)
    b.drop(ALICE.key)
    assert b.checked(step, True, NOW) == Refused("error: login failed", "failed")


def test_third_failure_on_a_connection_closes_it():
    attempts = LoginAttempts()
    failed = Refused("error: login failed", "failed")
    assert attempts.refused(Refused("error: account suspended: a", "")) == (
        "error: account suspended: a", False)
    assert attempts.refused(failed) == ("error: login failed", False)
    assert attempts.refused(failed) == ("error: login failed", False)
    assert attempts.refused(failed) == ("error: too many failed logins", True)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="off, optional, required"):
        AccountBook("maybe")

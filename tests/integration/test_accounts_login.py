"""Accounts over real sockets (PROTOCOL.md v2, "Accounts"): the login exchange.

Accounts are put in the data directory's store before the server starts (the
same SQLite file and argon2id hashes the server writes itself)."""

from __future__ import annotations

import sqlite3
import time

import pytest

from chatsrv import passwords
from chatsrv.core.accounts import Account
from chatsrv.store.sqlite import SqliteStore

PROMPT = "enter a username:"
FAILED = "error: login failed"


def seed(tmp_path, *accounts: tuple[str, str], suspended: tuple[str, ...] = ()) -> None:
    store = SqliteStore(tmp_path / "data")
    store.load(10)
    for name, password in accounts:
        store.add_account(Account(name, passwords.hash_password(password), time.time(),
                                  suspended=name in suspended))
    store.close()


@pytest.fixture
def accounts_server(tmp_path, make_server):
    seed(tmp_path, ("alice", "correct-horse"), ("Zoë", "pässwörd-ok"), ("mallory", "s3cret-pw"),
         suspended=("mallory",))

    def start(mode: str = "optional", **options):
        return make_server(rate_limit=0, accounts=mode, **options)

    return start


def logged(server, text: str, timeout: float = 5.0) -> bool:
    """Whether `text` shows in the server's log within `timeout` (it is written
    just after the close the client saw)."""
    deadline = time.monotonic() + timeout
    while text not in server.log():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def at_prompt(connect, server, line: str):
    """A new connection that got the prompt and sent `line`."""
    client = connect(server)
    client.expect(PROMPT)
    client.send(line)
    return client


def welcome(client, name: str) -> None:
    client.expect(f"connected! welcome {name}", "you joined the group General")


def test_password_prompt_then_welcome(accounts_server, connect):
    server = accounts_server()
    client = at_prompt(connect, server, "alice")
    client.expect("password for alice:")
    client.send("correct-horse")
    welcome(client, "alice")
    assert client.request("ping") == "ok: pong"


def test_one_line_form_and_case_insensitive_name(accounts_server, connect):
    server = accounts_server()
    client = at_prompt(connect, server, "ZOË pässwörd-ok")
    welcome(client, "Zoë")  # the account's name as first written


def test_guests_unchanged_in_optional_mode(accounts_server, connect):
    server = accounts_server()
    client = at_prompt(connect, server, "bob")
    welcome(client, "bob")
    other = connect(server)
    other.expect(PROMPT)
    other.send("carol some-password")  # a password for a name that is no account
    other.expect(FAILED, PROMPT)


def test_wrong_password_then_prompt_and_third_failure_closes(accounts_server, connect):
    server = accounts_server()
    client = at_prompt(connect, server, "alice")
    client.expect("password for alice:")
    client.send("wrong-horse")
    client.expect(FAILED, PROMPT)
    client.send("alice also-wrong")
    client.expect(FAILED, PROMPT)
    client.send("alice still-wrong")
    client.expect("error: too many failed logins")
    assert client.closed()
    assert logged(server, "reason=login_failed")


def test_suspended_account(accounts_server, connect):
    server = accounts_server()
    client = at_prompt(connect, server, "mallory s3cret-pw")
    client.expect("error: account suspended: mallory", PROMPT)


def test_required_mode_asks_every_name_for_a_password(accounts_server, connect):
    server = accounts_server("required")
    client = at_prompt(connect, server, "nobody")
    client.expect("password for nobody:")  # whether the account exists is not revealed
    client.send("whatever-pw")
    client.expect(FAILED, PROMPT)
    client.send("alice correct-horse")
    welcome(client, "alice")


def test_accounts_off_is_version_1(accounts_server, connect):
    server = accounts_server("off")
    client = at_prompt(connect, server, "al ice")
    assert client.read_line().startswith("error: invalid username:")
    client.expect(PROMPT)
    client.send("alice")  # an account's name, but accounts are off: a guest
    welcome(client, "alice")


def test_login_replaces_the_older_session(accounts_server, connect):
    server = accounts_server()
    watcher = at_prompt(connect, server, "bob")
    welcome(watcher, "bob")
    old = at_prompt(connect, server, "alice correct-horse")
    welcome(old, "alice")
    watcher.expect("* alice joined the group General")
    new = at_prompt(connect, server, "alice correct-horse")
    welcome(new, "alice")
    old.expect("* disconnected: logged in from another connection")
    assert old.closed()
    watcher.expect("* alice left the group General", "* alice joined the group General")
    assert new.request("users").count("alice") == 1
    assert logged(server, "reason=replaced")


def test_a_guest_holding_an_account_name_is_replaced(tmp_path, make_server, connect):
    """A guest took `dana` before the account existed; the account's owner wins."""
    server = make_server(rate_limit=0, accounts="optional")
    guest = at_prompt(connect, server, "dana")
    welcome(guest, "dana")
    server.stop()
    seed(tmp_path, ("dana", "danas-password"))
    server = make_server(rate_limit=0, accounts="optional")
    guest = at_prompt(connect, server, "dana")
    guest.expect("password for dana:")


def test_logins_metric_by_result(accounts_server, connect, tmp_path):
    from conftest import Api, free_port

    port = free_port()
    server = accounts_server(http_port=port, admin_token="t" * 20)
    for line in ("alice correct-horse", "bob", "alice wrong-horse"):
        client = connect(server)
        client.expect(PROMPT)
        client.send(line)
        client.read_line()
    api = Api(f"http://127.0.0.1:{port}", "t" * 20)
    text = api.metrics()
    for result, value in (("password", 1), ("guest", 1), ("failed", 1), ("token", 0)):
        assert f'chatsrv_logins_total{{result="{result}"}} {value}.0' in text
    assert "chatsrv_accounts 3.0" in text


def test_register_password_and_token_commands(accounts_server, connect):
    server = accounts_server()
    guest = at_prompt(connect, server, "dave")
    welcome(guest, "dave")
    assert guest.request("token") == "error: not logged in to an account"
    assert guest.request("password old-password new-password") == \
        "error: not logged in to an account"
    assert guest.request("register short") == \
        "error: invalid password: too short (at least 8 characters)"
    assert guest.request("register ab\x7fcdefgh") == \
        "error: invalid password: control characters are not allowed"
    guest.send("register daves-password")
    guest.send("ping")  # pipelined: answered after the registration, in order
    guest.expect("ok: registered dave", "ok: pong")
    assert guest.request("register another-one") == "error: already registered: dave"
    token = guest.request("token")
    assert token.startswith("ok: token ct1.")
    token = token.removeprefix("ok: token ")
    # The token logs in instead of the password (and replaces the older session).
    tab = at_prompt(connect, server, f"dave {token}")
    welcome(tab, "dave")
    guest.expect("* disconnected: logged in from another connection")
    assert tab.request("password wrong-password next-password") == "error: wrong password"
    assert tab.request("password daves-password bad") == \
        "error: invalid password: too short (at least 8 characters)"
    assert tab.request("password daves-password next-password") == "ok: password changed"
    # Every token of the account stops working; the new password works.
    again = at_prompt(connect, server, f"dave {token}")
    again.expect("error: login failed", PROMPT)
    again.send("dave next-password")
    welcome(again, "dave")


def test_register_taken_by_an_admin_a_moment_earlier(accounts_server, connect):
    """The name became an account (here: seeded) while the guest was logged in."""
    server = accounts_server()
    guest = at_prompt(connect, server, "bob")
    welcome(guest, "bob")
    assert guest.request("register bobs-password") == "ok: registered bob"
    other = at_prompt(connect, server, "alice correct-horse")
    welcome(other, "alice")
    assert other.request("register something-else") == "error: already registered: alice"


def test_account_commands_when_disabled_or_required(accounts_server, connect):
    server = accounts_server("off")
    client = at_prompt(connect, server, "erin")
    welcome(client, "erin")
    for line in ("register erins-password", "password a-password b-password", "token"):
        assert client.request(line) == "error: accounts are disabled"
    assert client.request("help") == ("ok: commands: create join leave groups users public "
                                      "private exit history help ping register password token info set mod unmod invite uninvite kick ban unban mute unmute")
    server.stop()
    server = accounts_server("required")
    client = at_prompt(connect, server, "alice correct-horse")
    welcome(client, "alice")
    assert client.request("register another-pass") == "error: already registered: alice"


def test_old_hash_parameters_are_rehashed_at_login(tmp_path, make_server, connect):
    """A hash made with other argon2 parameters (an older release) still logs in,
    and the login stores a hash of today's parameters (tokens stay valid)."""
    from argon2 import PasswordHasher

    from chatsrv.store.sqlite import SqliteStore

    old = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("old-params-pw")
    store = SqliteStore(tmp_path / "data")
    store.load(10)
    store.add_account(Account("olga", old, time.time()))
    store.close()
    server = make_server(rate_limit=0, accounts="optional")
    client = at_prompt(connect, server, "olga old-params-pw")
    welcome(client, "olga")
    token = client.request("token").removeprefix("ok: token ")
    db = sqlite3.connect(f"file:{tmp_path / 'data' / 'chatsrv.db'}?mode=ro", uri=True)
    deadline = time.monotonic() + 10
    while (phc := db.execute("SELECT phc FROM accounts").fetchone()[0]) == old:
        assert time.monotonic() < deadline, "not rehashed"
        time.sleep(0.05)
    db.close()
    assert phc.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert passwords.verify_password(phc, "old-params-pw")
    server.stop()
    server = make_server(rate_limit=0, accounts="optional")
    again = at_prompt(connect, server, f"olga {token}")
    welcome(again, "olga")


def test_two_logins_to_one_account_at_once_leave_exactly_one(accounts_server, connect):
    server = accounts_server()
    clients = [connect(server) for _ in range(6)]
    for client in clients:
        client.expect(PROMPT)
    for client in clients:
        client.send("alice correct-horse")
    for client in clients:
        welcome(client, "alice")  # each logs in, and each later one replaces the one before
    watcher = at_prompt(connect, server, "zed")
    welcome(watcher, "zed")
    deadline = time.monotonic() + 5
    while (users := watcher.request("users")) != "users: alice zed":
        assert time.monotonic() < deadline, users
    survivors = [c for c in clients if not c.closed(wait=0.5)]
    assert len(survivors) == 1
    survivors[0].sync()  # still served


def test_hostile_secrets(accounts_server, connect):
    server = accounts_server()
    client = at_prompt(connect, server, "alice")
    client.expect("password for alice:")
    client.send("x" * 10_000)  # longer than --max-line: a framing error, then the prompt
    assert client.read_line().startswith("error: line too long")
    client.expect(PROMPT)
    for secret in ("ct1.zzzzzz.AAAA", "ct1." + "9" * 60 + ".x", "pass\tword-ok"):
        client.send(f"alice {secret}")
        line = client.read_line()
        assert line in ("error: login failed", "error: too many failed logins"), line
        if line == "error: too many failed logins":
            assert client.closed()
            break
        client.expect(PROMPT)


def test_failed_login_flood_from_one_address_meets_the_address_limits(accounts_server):
    """Each connection gets three tries, and new connections from the address are
    rate-limited as always: a password-guessing flood is bounded on both sides."""
    from conftest import Client

    server = accounts_server(exempt="", connect_rate=2)  # burst 4, then 2/s
    guesser = Client(server.host, server.port)
    guesser.expect(PROMPT)
    for _ in range(2):
        guesser.send("alice not-her-password")
        guesser.expect("error: login failed", PROMPT)
    guesser.send("alice not-her-password")
    guesser.expect("error: too many failed logins")
    assert guesser.closed()
    # The next connections, opened at once (no hashing between them): past the
    # burst, refused before any prompt.
    clients = [Client(server.host, server.port) for _ in range(10)]
    firsts = [client.read_line() for client in clients]
    assert firsts.count("error: connecting too fast") >= 5, firsts
    assert set(firsts) <= {PROMPT, "error: connecting too fast"}

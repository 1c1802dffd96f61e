"""PROTOCOL.md v1 over real TCP against a real `chatsrv serve` process: the socket tier.

What only a transport can show lives here: framing (LF, CRLF, the line limit,
invalid UTF-8, small writes), the prompt and login phase, UTF-8 names and
texts on the wire, session end (exit, EOF, reset, shutdown), ordering and the
rate limit, and that the options reach the hub. The command cases that need no
transport (every command, the error table, history counts, notices) are unit
tests on the core: tests/unit/test_commands.py.

Each test names one rule of the contract and fails when that rule breaks. Tests that
need a fresh server start one (about 0.15 s); "nothing else arrived" is checked with
a ping whose pong must be the very next line, which is exact and needs no sleep.
"""

from __future__ import annotations

import itertools
import re
import signal
import socket
import struct
import time
import unicodedata
from datetime import datetime, timezone

import pytest
from conftest import start_server, wait_for

PROMPT = "enter a username:"
PONG = "ok: pong"
HELP = "ok: commands: create join leave groups users public private exit history help ping register password token info set mod unmod invite uninvite kick ban unban mute unmute"
INVALID_NAME = "error: invalid username: "
TOO_LONG = "error: line too long (max 4096 bytes)"
BAD_UTF8 = "error: invalid UTF-8"
CONTROL = "error: control characters are not allowed"
LINE_KINDS = (
    "enter a username:", "connected! ", "you joined the group ", "ok: ", "error: ",
    "groups: ", "users: ", "[public group ", "[private from ", "[history group ", "* ",
)


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server for the tests that only look at their own user's replies.

    notice_limit=1 means no join/leave notice ever reaches anyone, and those tests use
    names of their own and never deliver to General, so they cannot see each other.
    Between them they create far more groups than `--create-rate` allows one
    address: it is off here (test_group_limits.py tests it).
    """
    server = start_server(tmp_path_factory.mktemp("shared"), rate_limit=0, notice_limit=1,
                          create_rate=0)
    yield server
    server.stop(signal.SIGKILL)


# --------------------------------------------------------------------- helpers


def quiet(*clients) -> None:
    """Assert each client has received nothing since its last read (pong comes next)."""
    for client in clients:
        client.send("ping")
        got = client.read_line()
        assert got == PONG, f"{client.name}: unexpected {got!r} before the pong"


def replies(client, *lines: str) -> list[str]:
    """Pipeline `lines` plus a ping; return every reply before the pong."""
    client.send("\n".join([*lines, "ping"]))
    return client.read_until(lambda line: line == PONG)[:-1]


def group_with(name: str, *clients) -> None:
    """clients[0] creates `name`; all join in order; earlier members see each join."""
    assert clients[0].request(f"create {name}") == f"ok: created group {name}"
    for i, client in enumerate(clients):
        assert client.request(f"join {name}") == f"ok: joined group {name}"
        for member in clients[:i]:
            member.expect(f"* {client.name} joined the group {name}")


def sign_in(connect, server, typed: str):
    """Log in as `typed`, expecting the welcome to show its NFC form."""
    client = connect(server)
    client.expect(PROMPT)
    client.send(typed)
    client.expect(f"connected! welcome {nfc(typed)}", "you joined the group General")
    client.name = nfc(typed)
    return client


def publics(group: str, texts) -> str:
    return "\n".join(f"public {group} {text}" for text in texts)


def reset(client) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP reset instead of a FIN."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sock.close()


def trickle(client, data: bytes, piece: int = 97) -> None:
    """Send `data` in many small writes, so the server sees many short reads."""
    for i in range(0, len(data), piece):
        client.sock.sendall(data[i:i + piece])
        time.sleep(0.001)


_ids = itertools.count(1)


def uid(prefix: str) -> str:
    """A name no other test on the shared server uses."""
    return f"{prefix}{next(_ids)}"


@pytest.fixture
def pair(shared, login):
    """Two users on the shared server and a group of their own they are both in."""
    alice = login(shared, uid("alice"))
    bob = login(shared, uid("bob"))
    group = uid("grp")
    assert alice.request(f"create {group}") == f"ok: created group {group}"
    assert alice.request(f"join {group}") == f"ok: joined group {group}"
    assert bob.request(f"join {group}") == f"ok: joined group {group}"
    return alice, bob, group


@pytest.fixture
def solo(shared, login):
    """One user on the shared server."""
    return login(shared, uid("solo"))


@pytest.fixture
def two(server, login):
    """alice and bob, both in General, bob's join notice already read by alice."""
    alice = login(server, "alice")
    bob = login(server, "bob")
    alice.expect("* bob joined the group General")
    return alice, bob


# --------------------------------------------------------------------- framing


def test_lf_and_crlf_both_end_a_line(two):
    alice, bob = two
    alice.send(b"ping\nping\r\npublic General crlf\r\npublic General lf\n")
    alice.expect(PONG, PONG)
    bob.expect("[public group General from alice] crlf", "[public group General from alice] lf")
    quiet(alice, bob)


def test_every_server_line_ends_with_lf_prompt_included(server, connect):
    client = connect(server)
    data = b""
    while not data.endswith(b"\n"):
        data += client.sock.recv(100)
    assert data == b"enter a username:\n"


def test_line_of_exactly_max_bytes_with_lf_is_accepted(two):
    alice, bob = two
    line = "public General " + "x" * (4095 - len("public General "))
    assert len(line.encode()) == 4095
    alice.send(line)
    bob.expect("[public group General from alice] " + line[len("public General "):])
    quiet(alice)


def test_line_one_byte_over_max_is_rejected_and_discarded(two):
    alice, bob = two
    line = "public General " + "x" * (4096 - len("public General "))
    alice.send(line + "\nping")
    alice.expect(TOO_LONG, PONG)
    quiet(bob)


def test_line_with_crlf_counts_the_cr_toward_the_maximum(two):
    alice, bob = two
    line = "public General " + "y" * (4095 - len("public General "))
    alice.send(line.encode() + b"\r\nping\n")
    alice.expect(TOO_LONG, PONG)
    quiet(bob)


def test_very_long_line_is_discarded_up_to_its_lf_and_reported_once(two):
    alice, bob = two
    alice.send("public General " + "z" * 100_000 + "\nping")
    alice.expect(TOO_LONG, PONG)
    quiet(bob)


def test_too_long_line_sent_in_many_small_writes(two):
    alice, bob = two
    # The tail after the first 4096 bytes must not be taken for a new line.
    trickle(alice, b"public General " + b"q" * 6000 + b" private bob tail\nping\n")
    alice.expect(TOO_LONG, PONG)
    quiet(alice, bob)


def test_max_length_line_sent_in_many_small_writes_is_accepted(two):
    alice, bob = two
    text = "w" * (4095 - len("public General "))
    trickle(alice, f"public General {text}".encode())
    time.sleep(0.05)
    alice.send(b"\n")
    bob.expect(f"[public group General from alice] {text}")
    quiet(alice)


def test_max_line_option_sets_the_limit_and_the_error_text(make_server, login):
    server = make_server(rate_limit=0, max_line=64)
    alice = login(server, "alice")
    assert alice.request("private alice " + "a" * (63 - 14)) == "[private from alice] " + "a" * 49
    alice.send("private alice " + "a" * 50 + "\nping")
    alice.expect("error: line too long (max 64 bytes)", PONG)


def test_invalid_utf8_is_rejected_and_the_connection_stays_open(two):
    alice, bob = two
    alice.send(b"public General caf\xc3\n")
    alice.send(b"public General \xff\xfe\nping\n")
    alice.expect(BAD_UTF8, BAD_UTF8, PONG)
    quiet(bob)


@pytest.mark.parametrize("blank", [b"\n", b"   \n", b"\t\n", b" \t \t\n", b"\r\n", b" \r\n"])
def test_blank_line_after_login_gets_no_reply(solo, blank):
    alice = solo
    alice.send(blank)  # the pong below is the next line: no reply came before it
    alice.send(blank * 3 + b"ping\n")
    alice.expect(PONG)


def test_last_line_without_lf_before_close_is_discarded(two):
    alice, bob = two
    alice.send(b"public General lost")
    alice.close()
    bob.expect("* alice left the group General")
    quiet(bob)


def test_pipelined_commands_are_answered_in_order(server, login):
    alice = login(server, "alice")
    alice.send("help\ncreate Dev\ngroups\njoin Dev\nbogus\nusers\nping")
    alice.expect(HELP, "ok: created group Dev", "groups: Dev General", "ok: joined group Dev",
                 "error: unknown command: bogus", "users: alice", PONG)


def test_every_server_line_is_one_of_the_documented_kinds(server, connect):
    alice = connect(server)
    lines = [alice.read_line()]
    alice.send("_\nalice")
    lines += [alice.read_line() for _ in range(4)]
    bob = connect(server)
    bob.send("bob")
    lines += [bob.read_line() for _ in range(3)]
    lines += replies(alice, "create Dev", "join Dev", "groups", "users", "help", "bogus",
                     "public General x", "history General", "private alice z", "join Dev",
                     "exit now", "history Dev 0")
    bob.send("join Dev\npublic Dev hi\nexit")
    lines += bob.read_until(lambda line: line == "ok: bye")
    lines += [alice.read_line() for _ in range(3)]  # bob joined Dev, left Dev and General
    kinds = [next((k for k in LINE_KINDS if line.startswith(k)), None) for line in lines]
    assert None not in kinds, list(zip(kinds, lines, strict=True))
    assert set(kinds) == set(LINE_KINDS), set(LINE_KINDS) - set(kinds)


# --------------------------------------------------------------------- names


# UTF-8 names on the wire, as user and group (every naming rule: tests/unit).
@pytest.mark.parametrize(
    "name",
    [
        "سَارا\u200cجان",  # Persian: vowel mark (fatha) and zero-width non-joiner
        "张伟",  # CJK
        "\U0001d49c" * 32,  # 32 code points outside the BMP (64 UTF-16 units, 128 bytes)
        "e\u0301" * 32,  # 64 code points, but 32 after NFC: the rule applies after NFC
    ],
)
def test_valid_unicode_name_as_user_and_group(shared, connect, name):
    user = sign_in(connect, shared, name)
    assert f" {nfc(name)}" in user.request("users")
    assert user.request(f"create {name}") == f"ok: created group {nfc(name)}"
    assert user.request(f"join {name}") == f"ok: joined group {nfc(name)}"


# The prompt again after a refusal (every invalid name: tests/unit/test_commands.py;
# "al ice" is the one-line `name password` form since v2: test_accounts_login.py).
@pytest.mark.parametrize("name", ["", "x" * 33, "bob!", "\u0301x", "\U0001f600"])
def test_invalid_username_is_refused_then_prompt_again(shared, connect, name):
    client = connect(shared)
    client.expect(PROMPT)
    client.send(name)
    assert client.read_line().startswith(INVALID_NAME)
    client.expect(PROMPT)


def test_username_taken_shows_the_name_as_typed_in_nfc(shared, login, connect):
    login(shared, "\u00e9lodie")
    client = connect(shared)
    client.expect(PROMPT)
    client.send("E\u0301LODIE")
    client.expect("error: username taken: \u00c9LODIE", PROMPT)


# --------------------------------------------------------------------- login


def test_prompt_then_welcome_and_general(server, connect):
    client = connect(server)
    client.expect(PROMPT)
    client.send("alice\nping")
    client.expect("connected! welcome alice", "you joined the group General", PONG)


def test_welcome_arrives_with_no_further_input(server, connect):
    client = connect(server, timeout=2.0)
    client.expect(PROMPT)
    client.send("alice")
    client.expect("connected! welcome alice", "you joined the group General")


def test_join_notice_of_a_login_arrives_with_no_further_input(server, login, connect):
    alice = login(server, "alice")
    bob = connect(server)
    bob.expect(PROMPT)
    bob.send("bob")
    alice.sock.settimeout(2.0)
    assert alice.read_line() == "* bob joined the group General"


def test_invalid_then_valid_username_logs_in(server, connect):
    client = connect(server)
    client.expect(PROMPT)
    client.send("_bad\nbob\nping")
    assert client.read_line().startswith(INVALID_NAME)
    client.expect(PROMPT, "connected! welcome bob", "you joined the group General", PONG)


def test_empty_line_at_prompt_is_an_invalid_name(server, connect):
    client = connect(server)
    client.expect(PROMPT)
    client.send("")
    assert client.read_line().startswith(INVALID_NAME)
    client.expect(PROMPT)


def test_too_long_line_at_prompt_gets_framing_error_then_prompt(server, connect):
    client = connect(server)
    client.expect(PROMPT)
    client.send("a" * 5000 + "\nalice\nping")
    client.expect(TOO_LONG, PROMPT, "connected! welcome alice", "you joined the group General",
                  PONG)


def test_too_long_line_at_prompt_in_small_writes_is_discarded_up_to_its_lf(server, connect):
    client = connect(server)
    client.expect(PROMPT)
    trickle(client, b"a" * 5000)
    client.expect(TOO_LONG, PROMPT)  # reported before its LF arrives
    client.send("tail\nalice\nping")  # "tail" ends the discarded line: it is no name
    client.expect("connected! welcome alice", "you joined the group General", PONG)


def test_invalid_utf8_at_prompt_gets_framing_error_then_prompt(server, connect):
    client = connect(server)
    client.expect(PROMPT)
    client.send(b"al\xffice\nalice\nping\n")
    client.expect(BAD_UTF8, PROMPT, "connected! welcome alice", "you joined the group General",
                  PONG)


def test_login_timeout_closes_the_connection(make_server, login, connect):
    server = make_server(rate_limit=0, login_timeout=1)
    alice = login(server, "alice")
    client = connect(server)
    start = time.monotonic()
    client.expect(PROMPT)
    client.send("_not_valid")
    assert client.read_line().startswith(INVALID_NAME)
    client.expect(PROMPT, "error: login timeout")
    assert client.closed()
    assert 0.8 < time.monotonic() - start < 5
    quiet(alice)  # a logged-in session is not subject to the login timeout


def test_server_full_counts_sessions_at_the_prompt(make_server, login, connect):
    server = make_server(rate_limit=0, max_clients=2)
    alice = login(server, "alice")
    waiting = connect(server)
    waiting.expect(PROMPT)
    refused = connect(server)
    assert refused.read_line() == "error: server full"
    assert refused.closed()
    assert not refused.buf
    waiting.close()
    deadline = time.monotonic() + 5
    while True:  # the slot is free once the server has seen the close
        again = connect(server)
        line = again.read_line()
        if line == PROMPT or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert line == PROMPT
    quiet(alice)


def test_login_joins_general_and_notifies_its_members(server, login):
    alice = login(server, "alice")
    bob = login(server, "bob")
    alice.expect("* bob joined the group General")
    carol = login(server, "carol")
    alice.expect("* carol joined the group General")
    bob.expect("* carol joined the group General")
    quiet(alice, bob, carol)
    assert carol.request("join General") == "error: already a member of General"


def test_notice_limit_suppresses_join_notices_in_larger_groups(make_server, login):
    server = make_server(rate_limit=0, notice_limit=3)
    a = login(server, "a")
    b = login(server, "b")
    a.expect("* b joined the group General")
    c = login(server, "c")  # General has 3 members counting c: notices sent
    a.expect("* c joined the group General")
    b.expect("* c joined the group General")
    d = login(server, "d")  # 4 > 3: no notices, but d's own replies as usual
    quiet(a, b, c, d)


# --------------------------------------------------------------------- commands


def test_users_lists_every_user_sorted_case_insensitively(server, login, connect):
    for name in ("bob", "Alice", "dave", "Carol"):
        user = login(server, name)
    connect(server).expect(PROMPT)  # a connection at the prompt is not a user
    assert user.request("users") == "users: Alice bob Carol dave"


def test_public_reaches_every_member_but_the_sender(server, login):
    alice = login(server, "alice")
    bob = login(server, "bob")
    carol = login(server, "carol")
    dave = login(server, "dave")
    for user in (alice, bob, carol):
        user.sync()
    group_with("Dev", alice, bob, carol)
    alice.send("public Dev hello all")
    bob.expect("[public group Dev from alice] hello all")
    carol.expect("[public group Dev from alice] hello all")
    quiet(alice, bob, carol, dave)


def test_private_reaches_only_the_target(server, login):
    alice = login(server, "alice")
    bob = login(server, "bob")
    carol = login(server, "carol")
    alice.sync()
    bob.sync()
    alice.send("private bob  secret  text ")
    bob.expect("[private from alice] secret  text ")
    quiet(alice, bob, carol)


def test_exit_says_bye_closes_and_notifies_every_group(server, login):
    alice = login(server, "alice")
    bob = login(server, "bob")
    alice.sync()
    group_with("Dev", alice, bob)
    group_with("Ops", bob, alice)
    alice.send("exit")
    alice.expect("ok: bye")
    assert alice.closed()
    assert not alice.buf
    got = {bob.read_line() for _ in range(3)}
    assert got == {f"* alice left the group {g}" for g in ("General", "Dev", "Ops")}
    quiet(bob)
    assert bob.request("private alice hi") == "error: no such user: alice"


def test_lines_pipelined_after_exit_are_not_run(two):
    alice, bob = two
    alice.send("exit\nprivate bob after\ncreate Late")
    alice.expect("ok: bye")
    assert alice.closed()
    assert not alice.buf
    bob.expect("* alice left the group General")
    assert bob.request("groups") == "groups: General"


def test_exit_frees_the_name_at_once(server, login):
    alice = login(server, "alice")
    alice.send("exit")
    alice.expect("ok: bye")
    assert alice.closed()
    login(server, "ALICE")


def test_help(server, login):
    assert login(server, "alice").request("help") == HELP


def test_ping(server, login):
    assert login(server, "alice").request("ping") == PONG


# --------------------------------------------------------------------- history


HISTORY_LINE = re.compile(
    r"\[history group (\S+) at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) from (\S+)\] (.*)"
)


def history(client, *args: str) -> list[str]:
    """The texts a `history` command returns, after checking its framing."""
    group = args[0]
    client.send(" ".join(["history", *args]))
    lines = client.read_until(lambda line: not line.startswith("[history group "))
    assert lines[-1] == f"ok: end of history {group}", lines[-1]
    texts = []
    for line in lines[:-1]:
        match = HISTORY_LINE.fullmatch(line)
        assert match, line
        texts.append(match.group(4))
    return texts


def test_history_line_format_and_utc_time(two):
    alice, bob = two
    before = int(time.time())
    alice.send("public General first  message ")
    bob.expect("[public group General from alice] first  message ")
    after = time.time()
    bob.send("history general")
    line = bob.read_line()
    match = HISTORY_LINE.fullmatch(line)
    assert match, line
    assert match.group(1) == "General" and match.group(3) == "alice"
    assert match.group(4) == "first  message "
    stamp = datetime.strptime(match.group(2), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert before <= stamp.timestamp() <= after + 1
    bob.expect("ok: end of history General")


def test_history_disabled(make_server, login):
    server = make_server(rate_limit=0, history=0)
    alice = login(server, "alice")
    alice.send("public General hi")
    assert alice.request("history General") == "error: history is disabled"
    assert alice.request("history nosuch 0") == "error: history is disabled"


def test_history_ring_is_bounded_by_the_history_option(make_server, login):
    server = make_server(rate_limit=0, history=5)
    alice = login(server, "alice")
    alice.send(publics("General", (f"m{i}" for i in range(1, 9))))
    assert history(alice, "General") == ["m4", "m5", "m6", "m7", "m8"]
    assert history(alice, "General", "200") == ["m4", "m5", "m6", "m7", "m8"]


# --------------------------------------------------------------------- errors


def test_no_such_user(solo, shared, connect):
    waiting = connect(shared)
    waiting.expect(PROMPT)
    waiting.send(b"nobody")  # at the prompt, no LF yet: not logged in
    assert solo.request("private nobody hi") == "error: no such user: nobody"


# On the wire: a CR inside a line (framing only drops the one before LF), and C1
# controls, which UTF-8 sends as two bytes, and (v2) a line separator and a bidi
# override, three bytes each (the full table: tests/unit/test_commands.py).
CONTROLS = ["\x00", "\r", "\x7f", "\x85", "\x9f", "\u2028", "\u202e"]


@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
def test_control_characters_are_refused_in_public(pair, char):
    alice, bob, group = pair
    assert alice.request(f"public {group} a{char}b") == CONTROL
    assert alice.request(f"public {group} {char}x") == CONTROL
    quiet(bob)


# --------------------------------------------------------------------- session end


def left_all(client, user: str, groups) -> None:
    got = {client.read_line() for _ in groups}
    assert got == {f"* {user} left the group {g}" for g in groups}
    quiet(client)


def test_eof_leaves_every_group_and_frees_the_name(server, login):
    alice = login(server, "alice")
    bob = login(server, "bob")
    alice.sync()
    group_with("Dev", alice, bob)
    alice.close()
    left_all(bob, "alice", ["General", "Dev"])
    again = login(server, "alice")
    bob.expect("* alice joined the group General")
    assert again.request("users") == "users: alice bob"


def test_half_close_is_end_of_file(server, login):
    alice = login(server, "alice")
    bob = login(server, "bob")
    alice.sync()
    alice.sock.shutdown(socket.SHUT_WR)
    assert alice.closed()
    left_all(bob, "alice", ["General"])
    login(server, "alice")


def test_reset_leaves_every_group_and_frees_the_name(server, login):
    alice = login(server, "alice")
    bob = login(server, "bob")
    alice.sync()
    group_with("Dev", alice, bob)
    reset(alice)
    left_all(bob, "alice", ["General", "Dev"])
    login(server, "Alice")
    bob.expect("* Alice joined the group General")


def test_disconnect_at_the_prompt_sends_no_notice(server, login, connect):
    alice = login(server, "alice")
    client = connect(server)
    client.expect(PROMPT)
    client.send(b"bob")  # no LF: never logged in
    client.close()
    # Barrier: the server has ended that session (logged) before alice's ping, so
    # a notice it sent would arrive before her pong.
    wait_for(lambda: "disconnect id=2 " in server.log(), "the prompt session's end")
    quiet(alice)
    login(server, "bob")


def test_shutdown_tells_everyone_then_closes_and_exits_0(server, login, connect):
    alice = login(server, "alice")
    bob = login(server, "bob")
    alice.expect("* bob joined the group General")
    waiting = connect(server)
    waiting.expect(PROMPT)
    assert server.stop(signal.SIGTERM) == 0
    for client in (alice, bob, waiting):
        client.expect("* server shutting down")
        assert client.closed()
        assert not client.buf


def test_send_queue_overflow_disconnects_only_the_slow_reader(make_server, login, connect):
    server = make_server(rate_limit=0, sendq=65536)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((server.host, server.port))
    slow = connect(server, sock=sock)
    slow.expect(PROMPT)
    slow.send("slow")
    slow.expect("connected! welcome slow", "you joined the group General")
    alice = login(server, "alice")
    # 6 MB to a reader that reads nothing: more than any kernel buffers plus --sendq.
    alice.send(publics("General", (f"{i} " + "x" * 1000 for i in range(6000))))
    alice.expect("* slow left the group General")
    quiet(alice)
    assert alice.request("users") == "users: alice"
    login(server, "slow")


# --------------------------------------------------------------------- ordering


def test_replies_and_deliveries_share_one_ordered_stream(two):
    alice, bob = two
    alice.send("public General m1")
    alice.sync()
    bob.send("ping")
    bob.expect("[public group General from alice] m1", PONG)
    alice.send("private bob p1\nping")
    alice.expect(PONG)
    bob.send("users\npublic General back\nhelp")
    bob.expect("[private from alice] p1", "users: alice bob", HELP)
    alice.expect("[public group General from bob] back")


def test_one_senders_mixed_messages_arrive_in_order(two):
    alice, bob = two
    lines, want = [], []
    for i in range(300):
        if i % 3:
            lines.append(f"public General n{i}")
            want.append(f"[public group General from alice] n{i}")
        else:
            lines.append(f"private bob n{i}")
            want.append(f"[private from alice] n{i}")
    alice.send("\n".join(lines))
    assert [bob.read_line() for _ in want] == want
    quiet(alice, bob)


def test_1000_pipelined_public_messages_arrive_in_order_at_every_receiver(server, login):
    alice = login(server, "alice")
    bob = login(server, "bob")
    carol = login(server, "carol")
    alice.sync()
    bob.sync()
    alice.send(publics("General", (f"{i:04d}" for i in range(1000))))
    want = [f"[public group General from alice] {i:04d}" for i in range(1000)]
    for receiver in (bob, carol):
        assert [receiver.read_line() for _ in range(1000)] == want
    quiet(alice, bob, carol)


# --------------------------------------------------------------------- rate limit


def test_rate_limit_delays_a_burst_but_answers_every_line_in_order(make_server, login):
    server = make_server(rate_limit=20)
    alice = login(server, "alice")
    start = time.monotonic()
    alice.send("\n".join(["ping"] * 100 + ["help"]))
    alice.expect(*[PONG] * 100, HELP)
    # 20 lines/s with a burst of 40: 100 lines cannot all be read in 1.5 s.
    assert time.monotonic() - start > 1.5


def test_rate_limit_counts_blank_and_too_long_lines(make_server, login):
    server = make_server(rate_limit=20)
    alice = login(server, "alice")
    start = time.monotonic()
    alice.send("\n" * 40 + "x" * 5000 + "\n" + " \n" * 40 + "ping")
    alice.expect(TOO_LONG, PONG)
    assert time.monotonic() - start > 1.5

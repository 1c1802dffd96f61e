"""The load-test client's pure parts: every PROTOCOL.md line kind, payloads, bookkeeping.

No sockets and no Locust here: importing Locust monkey-patches the interpreter,
which the other tests in this process must not get.
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from chatsrv.core import protocol as P  # noqa: E402
from loadtest.protocol import (  # noqa: E402
    Kind,
    Notice,
    decode_payload,
    encode_payload,
    generic,
    make_name,
    parse_host,
    parse_line,
)
from loadtest.tracker import (  # noqa: E402
    GroupDirectory,
    PairRegistry,
    PendingDeliveries,
    SequenceChecker,
)

# ---------------------------------------------------------------- line kinds


def test_prompt():
    line = parse_line("enter a username:")
    assert line.kind is Kind.PROMPT


def test_connected_carries_the_name():
    line = parse_line("connected! welcome alice")
    assert (line.kind, line.user) == (Kind.CONNECTED, "alice")


def test_you_joined_general():
    line = parse_line("you joined the group General")
    assert (line.kind, line.group) == (Kind.JOINED_GENERAL, "General")


@pytest.mark.parametrize(
    "raw, text",
    [
        ("ok: pong", "pong"),
        ("ok: created group dev", "created group dev"),
        ("ok: joined group Dev", "joined group Dev"),
        ("ok: end of history dev", "end of history dev"),
        ("ok: commands: create join leave groups users public private exit history help ping",
         "commands: create join leave groups users public private exit history help ping"),
    ],
)
def test_ok(raw, text):
    line = parse_line(raw)
    assert (line.kind, line.text) == (Kind.OK, text)


@pytest.mark.parametrize(
    "raw",
    [
        "error: usage: public <group> <message>",
        "error: no such user: bob",
        "error: line too long (max 4096 bytes)",
        "error: invalid UTF-8",
        "error: server full",
        "error: login timeout",
        "error: username taken: Alice",
    ],
)
def test_error_keeps_its_text(raw):
    line = parse_line(raw)
    assert line.kind is Kind.ERROR
    assert line.text == raw[len("error: ") :]


@pytest.mark.parametrize("kind, prefix", [(Kind.GROUPS, "groups"), (Kind.USERS, "users")])
def test_listings(kind, prefix):
    line = parse_line(f"{prefix}: General dev Зоя")
    assert (line.kind, line.names) == (kind, ("General", "dev", "Зоя"))


def test_empty_listing():
    assert parse_line("users: ").names == ()
    assert parse_line("users:").kind is Kind.USERS


def test_public_delivery():
    line = parse_line("[public group dev from alice] hello ] [there]  ")
    assert line.kind is Kind.PUBLIC
    assert (line.group, line.user, line.text) == ("dev", "alice", "hello ] [there]  ")


def test_private_delivery():
    line = parse_line("[private from bob] hi\tthere")
    assert (line.kind, line.user, line.text) == (Kind.PRIVATE, "bob", "hi\tthere")


def test_history_line():
    line = parse_line("[history group dev at 2026-11-24T10:00:00Z from alice] old news")
    assert line.kind is Kind.HISTORY
    assert (line.group, line.time, line.user, line.text) == (
        "dev", "2026-11-24T10:00:00Z", "alice", "old news",
    )


@pytest.mark.parametrize(
    "raw, notice, user, group",
    [
        ("* alice joined the group General", Notice.JOINED, "alice", "General"),
        ("* alice left the group dev", Notice.LEFT, "alice", "dev"),
        ("* disconnected by an administrator", Notice.KICKED, "", ""),
        ("* server shutting down", Notice.SHUTDOWN, "", ""),
        ("* announcement: maintenance at 5", Notice.ANNOUNCEMENT, "", ""),
        ("* something new", Notice.OTHER, "", ""),
    ],
)
def test_notices(raw, notice, user, group):
    line = parse_line(raw)
    assert (line.kind, line.notice, line.user, line.group) == (Kind.NOTICE, notice, user, group)


def test_announcement_text():
    assert parse_line("* announcement: we * are [back]").text == "we * are [back]"


@pytest.mark.parametrize(
    "raw",
    ["", "hello", "[public group dev] no sender", "[private from] x", "enter a username: x",
     "OK: pong"],
)
def test_anything_else_is_unknown(raw):
    assert parse_line(raw).kind is Kind.UNKNOWN


def test_trailing_cr_is_dropped():
    assert parse_line("ok: pong\r").text == "pong"


def test_every_protocol_line_kind_is_recognised():
    # The server's own list of prefixes: a new kind there must be parsed here too.
    samples = {
        "enter a username:": "enter a username:",
        "connected! ": "connected! welcome a",
        "you joined the group ": "you joined the group General",
        "ok: ": "ok: pong",
        "error: ": "error: x",
        "groups: ": "groups: General",
        "users: ": "users: a",
        "info: ": "info: g owner - moderators - members 1 join open post all history shared"
                  " visibility public",
        "[public group ": "[public group g from a] m",
        "[private from ": "[private from a] m",
        "[history group ": "[history group g at 2026-01-01T00:00:00Z from a] m",
        "* ": "* a joined the group g",
    }
    assert set(samples) == set(P.LINE_KINDS)
    for sample in samples.values():
        assert parse_line(sample).kind is not Kind.UNKNOWN, sample


# Names as PROTOCOL.md allows them (Persian with ZWNJ, Devanagari, CJK, ...).
names = st.text(
    alphabet=st.characters(categories=("L", "Nd", "Mn", "Mc"), include_characters="_.-\u200c"),
    min_size=1,
    max_size=32,
).map(P.normalize).filter(lambda n: P.name_problem(n) is None)
texts = st.text(min_size=1, max_size=200).filter(lambda t: not P.has_control(t))


@given(group=names, user=names, text=texts)
def test_deliveries_round_trip_the_servers_formatting(group, user, text):
    public = parse_line(P.public_prefix(group, user) + text)
    assert (public.kind, public.group, public.user, public.text) == (
        Kind.PUBLIC, group, user, text,
    )
    private = parse_line(P.private_prefix(user) + text)
    assert (private.kind, private.user, private.text) == (Kind.PRIVATE, user, text)
    history = parse_line(P.history_line(group, 1_700_000_000, user, text))
    assert (history.kind, history.group, history.user, history.text) == (
        Kind.HISTORY, group, user, text,
    )


@given(group=names, user=names)
def test_notices_round_trip_the_servers_formatting(group, user):
    joined = parse_line(P.joined_notice(user, group))
    assert (joined.notice, joined.user, joined.group) == (Notice.JOINED, user, group)
    left = parse_line(P.left_notice(user, group))
    assert (left.notice, left.user, left.group) == (Notice.LEFT, user, group)
    assert parse_line(P.welcome(user)).user == user
    assert parse_line(P.you_joined(group)).group == group


# ---------------------------------------------------------------- payloads


def test_payload_round_trip_and_padding():
    text = encode_payload(41, sent_at=1700000000.123456, size=64)
    assert len(text) == 64
    payload = decode_payload(text)
    assert payload.seq == 41
    assert payload.sent_at == pytest.approx(1700000000.123456, abs=1e-6)


def test_short_size_means_no_padding():
    assert encode_payload(1, sent_at=1.0, size=0) == "lt1 1 1.000000"


@pytest.mark.parametrize("text", ["hello", "lt1", "lt1 x 1.0", "lt1 1 soon", "lt2 1 1.0"])
def test_foreign_messages_have_no_payload(text):
    assert decode_payload(text) is None


def test_generic_hides_load_test_names_only():
    name = make_name("c", "abc123", 7)
    assert generic(f"error: no such user: {name}") == "error: no such user: <user>"
    assert generic("error: no such user: alice") == "error: no such user: alice"


# ---------------------------------------------------------------- --host


@pytest.mark.parametrize(
    "host, expected",
    [
        ("tcp://127.0.0.1:50000", ("127.0.0.1", 50000)),
        ("tcp://localhost:6000/", ("localhost", 6000)),
        ("TCP://example:1", ("example", 1)),
        ("127.0.0.1:7000", ("127.0.0.1", 7000)),
        ("127.0.0.1", ("127.0.0.1", 50000)),
        ("tcp://[::1]:50001", ("::1", 50001)),
    ],
)
def test_parse_host(host, expected):
    assert parse_host(host) == expected


@pytest.mark.parametrize("host", ["", None, "http://x:1", "tcp://x:99999", "tcp://a:b:c"])
def test_parse_host_rejects(host):
    with pytest.raises(ValueError):
        parse_host(host)


# ---------------------------------------------------------------- bookkeeping


def test_sequence_checker_accepts_a_stream_joined_midway():
    check = SequenceChecker()
    assert [check.check("public", "dev", "a", s) for s in (5, 6, 7)] == [None, None, None]


def test_sequence_checker_flags_gaps_and_reordering():
    check = SequenceChecker()
    assert check.check("public", "dev", "a", 1) is None
    assert check.check("public", "dev", "a", 3).startswith("gap")
    assert check.check("public", "dev", "a", 2).startswith("out of order")
    assert check.check("public", "dev", "a", 4) is None


def test_sequence_streams_are_per_sender_and_target():
    check = SequenceChecker()
    assert check.check("public", "dev", "a", 1) is None
    assert check.check("public", "ops", "a", 9) is None
    assert check.check("public", "DEV", "B", 4) is None
    assert check.check("private", "me", "a", 1) is None
    assert check.check("public", "Dev", "A", 2) is None  # names compare case-insensitively


def test_sequence_checker_forgets_a_left_group():
    check = SequenceChecker()
    check.check("public", "dev", "a", 1)
    check.forget_target("public", "dev")
    assert check.check("public", "dev", "a", 7) is None


def test_pending_delivered_and_overdue():
    pending = PendingDeliveries(timeout=5)
    key = ("public", "dev", "a", 1)
    pending.expect(key, ["b", "c"], now=100)
    pending.delivered(key, "B")
    assert pending.overdue(now=104) == []
    missing = pending.overdue(now=105)
    assert [(m.receiver, m.seq) for m in missing] == [("c", 1)]
    assert len(pending) == 0


def test_pending_cancel_and_forget():
    pending = PendingDeliveries(timeout=1)
    pending.expect(("public", "dev", "a", 1), ["b"], now=0)
    pending.expect(("public", "ops", "a", 1), ["b", "c"], now=0)
    pending.expect(("private", "b", "a", 1), ["b"], now=0)
    pending.cancel(("private", "b", "a", 1))
    pending.forget_group("dev", "b")
    pending.forget_receiver("c")
    assert [m.target for m in pending.overdue(now=2)] == ["ops"]


def test_pending_with_no_receivers_is_not_kept():
    pending = PendingDeliveries(timeout=1)
    pending.expect(("public", "dev", "a", 1), [], now=0)
    assert len(pending) == 0


def test_group_directory():
    groups = GroupDirectory()
    groups.add("Dev", "A")
    groups.add("dev", "b")
    groups.add("ops", "a")
    assert groups.members("DEV") == {"a", "b"}
    groups.remove_user("a")
    assert groups.members("dev") == {"b"} and groups.members("ops") == set()


def test_pairs_form_and_reform():
    pairs = PairRegistry()
    assert pairs.partner("a") is None  # waits
    assert pairs.partner("b") == "a"
    assert pairs.partner("a") == "b"
    assert pairs.partner("c") is None
    pairs.leave("b")
    assert pairs.is_gone("b") and not pairs.is_gone("a")
    assert pairs.partner("a") == "c"
    assert pairs.partner("c") == "a"


# ---------------------------------------------------------------- settings


def test_settings_precedence(monkeypatch):
    from types import SimpleNamespace

    from loadtest import settings

    monkeypatch.delenv("LOADTEST_CHAT_RATE", raising=False)
    assert settings.get(None, "chat_rate") == 1.0  # the default
    monkeypatch.setenv("LOADTEST_CHAT_RATE", "2.5")
    assert settings.get(None, "chat_rate") == 2.5  # env var, typed
    assert settings.get(SimpleNamespace(chat_rate=4.0), "chat_rate") == 4.0  # command line


def test_every_setting_has_a_flag_an_env_var_and_help():
    from loadtest import settings

    for s in settings.SETTINGS:
        assert s.flag.startswith("--") and s.env.startswith("LOADTEST_") and s.help
        assert isinstance(s.default, s.type)


def test_docs_list_every_setting():
    from pathlib import Path

    from loadtest import settings

    doc = (Path(__file__).parents[2] / "docs" / "loadtesting.md").read_text()
    for s in settings.SETTINGS:
        assert f"`{s.flag} " in doc and f"`{s.env}`" in doc, s.flag

"""The pure protocol layer: names, parsing (through the command table), formatting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatsrv.core import protocol as P
from chatsrv.core.commands import COMMANDS, HELP, parse
from chatsrv.core.errors import ProtocolError


def Command(word: str, args: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:  # noqa: N802
    return word, args


def parse_line(line: str) -> tuple[str, tuple[str, ...]] | None:
    """The command table's parse, as (word, args)."""
    parsed = parse(line)
    return None if parsed is None else (parsed[0].word, parsed[1])

# ---------------------------------------------------------------- names

@pytest.mark.parametrize(
    "name",
    [
        "alice", "Bob_2", "a.b-c", "7up", "Зоя", "देवनागरी", "小明", "علی",
        "مهر\u200cناز",  # Persian with ZWNJ
        "مُحَمَّد",  # Arabic script with vowel marks (combining)
        "x" * 32,
    ],
)
def test_valid_names(name):
    assert P.name_problem(P.normalize(name)) is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("x" * 33, "too long (max 32 characters)"),
        ("_bob", "must start with a letter or digit"),
        ("\u200cbob", "must start with a letter or digit"),
        ("bob smith", "character not allowed: ' '"),
        ("bob!", "character not allowed: '!'"),
    ],
)
def test_invalid_names(name, reason):
    assert P.name_problem(name) == reason


def test_names_are_nfc_and_case_insensitive():
    decomposed = "e\u0301mile"
    assert P.normalize(decomposed) == "\u00e9mile"
    assert P.name_key("Alice") == P.name_key("ALICE") == P.name_key("alice")
    assert P.name_key(P.normalize("E\u0301MILE")) == P.name_key("\u00e9mile")
    # Length counts code points after NFC: 32 precomposed letters fit.
    assert P.name_problem(P.normalize("e\u0301" * 32)) is None


# ---------------------------------------------------------------- parsing

@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("users", Command("users", ())),
        ("  USERS \t", Command("users", ())),
        ("join\t\tDev", Command("join", ("Dev",))),
        ("public Dev  hello  world  ", Command("public", ("Dev", "hello  world  "))),
        ("private bob \thi\tthere", Command("private", ("bob", "hi\tthere"))),
        ("history Dev", Command("history", ("Dev",))),
        ("history Dev 05", Command("history", ("Dev", "05"))),
        ("Exit", Command("exit", ())),
    ],
)
def test_parse(line, command):
    assert parse_line(line) == command


@pytest.mark.parametrize("line", ["", "   ", "\t \t"])
def test_blank_lines_are_ignored(line):
    assert parse_line(line) is None


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("FooBar x", "error: unknown command: FooBar"),
        ("exit now", "error: usage: exit"),
        ("join", "error: usage: join <group>"),
        ("join a b", "error: usage: join <group>"),
        ("public Dev", "error: usage: public <group> <message>"),
        ("public Dev   ", "error: usage: public <group> <message>"),
        ("private", "error: usage: private <user> <message>"),
        ("history", "error: usage: history <group> [count]"),
        ("history a 1 2", "error: usage: history <group> [count]"),
        ("groups all", "error: usage: groups"),
    ],
)
def test_parse_errors(line, error):
    with pytest.raises(ProtocolError) as info:
        parse_line(line)
    assert str(info.value) == error


@pytest.mark.parametrize("text", ["0", "201", "+5", "-1", "1.5", "\u0665", "x"])
def test_invalid_counts(text):
    with pytest.raises(ProtocolError) as info:
        P.parse_count(text)
    assert str(info.value) == f"error: invalid count: {text}"


def test_counts():
    assert P.parse_count(None) == 20
    assert P.parse_count("05") == 5
    assert P.parse_count("200") == 200


@pytest.mark.parametrize("text", ["a\x01b", "\x7f", "x\u0085", "\x1b[31m", "a\rb"])
def test_control_characters(text):
    assert P.has_control(text)


def test_tab_is_not_a_control_character():
    assert not P.has_control("a\tb ü 😀")


@given(st.text())
def test_any_text_parses_or_gives_one_error_line(line):
    try:
        command = parse_line(line)
    except ProtocolError as err:
        text = str(err)
        assert text.startswith("error: ")
        assert "\n" not in text or "\n" in line
    else:
        assert command is None or command[0] in COMMANDS


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_get_the_utf8_error(data):
    """What the session does with a framed line: decode, else the UTF-8 error."""
    line = data.split(b"\n")[0]
    try:
        text = line.decode()
    except UnicodeDecodeError:
        return
    try:
        parse_line(text)
    except ProtocolError as err:
        assert str(err).startswith("error: ")


# ---------------------------------------------------------------- formatting

def test_line_formats():
    assert P.history_line("Dev", 0.0, "bob", "hi") == (
        "[history group Dev at 1970-01-01T00:00:00Z from bob] hi"
    )
    assert P.listing("users", ["bob", "Alice", "carol"]) == "users: Alice bob carol"
    assert HELP == (
        b"ok: commands: create join leave groups users public private exit history help ping"
        b" register password token info set mod unmod invite uninvite kick ban unban mute unmute\n"
    )
    assert P.line_too_long(4096) == b"error: line too long (max 4096 bytes)\n"


def test_every_formatted_line_has_a_known_kind():
    lines = [
        P.PROMPT.decode(), P.welcome("a"), P.you_joined("g"), P.BYE, "error: x",
        P.listing("groups", ["g"]), P.listing("users", ["a"]),
        P.public_prefix("g", "a") + "m", P.private_prefix("a") + "m",
        P.history_line("g", 0, "a", "m"), P.joined_notice("a", "g"),
        P.SHUTTING_DOWN.decode(), P.KICKED.decode(), P.announcement("x"),
    ]
    for line in lines:
        assert sum(line.startswith(kind) for kind in P.LINE_KINDS) == 1, line

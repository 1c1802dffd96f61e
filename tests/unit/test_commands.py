"""PROTOCOL.md's command cases on the core, without sockets: names, login and
its notices, every command, history and the error table, driven through
`Hub.handle` by `hubkit.Chat` (each user reads what the hub queued for it, in
order). The transport (framing, the prompt, session end, ordering on the wire,
rate limits) is proven over sockets in tests/integration/test_protocol_conformance.py."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hubkit import Chat, FakeClock, quiet

from chatsrv.core.errors import LoginRefused
from chatsrv.core.hub import Hub

PONG = "ok: pong"
HELP = ("ok: commands: create join leave groups users public private exit history help ping"
        " register password token info set mod unmod invite uninvite kick ban unban mute unmute")
INVALID_NAME = "error: invalid username: "
INVALID_GROUP = "error: invalid group name: "
CONTROL = "error: control characters are not allowed"


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def make_hub(**options) -> Hub:
    """A hub with the server's defaults (`Config`), `--create-rate` off."""
    settings = {"history": 1000, "notice_limit": 1000, "max_groups": 10000, **options}
    return Hub(clock=FakeClock(), **settings)


@pytest.fixture
def hub() -> Hub:
    return make_hub()


@pytest.fixture
def login(hub):
    return lambda name: Chat(hub, name)


@pytest.fixture
def solo(login) -> Chat:
    return login("solo")


@pytest.fixture
def two(login) -> tuple[Chat, Chat]:
    """alice and bob, both in General, bob's join notice already read by alice."""
    alice, bob = login("alice"), login("bob")
    alice.expect("* bob joined the group General")
    return alice, bob


@pytest.fixture
def pair(two) -> tuple[Chat, Chat, str]:
    """alice and bob and a group of their own they are both in."""
    alice, bob = two
    group_with("grp", alice, bob)
    return alice, bob, "grp"


def refused(hub: Hub, name: str) -> str:
    """The `error: ...` line a username line gets (the session then prompts again)."""
    with pytest.raises(LoginRefused) as info:
        hub.login(name)
    return str(info.value)


def replies(chat: Chat, *lines: str) -> list[str]:
    chat.send("\n".join([*lines, "ping"]))
    return chat.read_until(lambda line: line == PONG)[:-1]


def group_with(name: str, *chats: Chat) -> None:
    """chats[0] creates `name`; all join in order; earlier members see each join."""
    assert chats[0].request(f"create {name}") == f"ok: created group {name}"
    for i, chat in enumerate(chats):
        assert chat.request(f"join {name}") == f"ok: joined group {name}"
        for member in chats[:i]:
            member.expect(f"* {chat.name} joined the group {name}")


def publics(group: str, texts) -> str:
    return "\n".join(f"public {group} {text}" for text in texts)


# --------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    [
        "سَارا\u200cجان",  # Persian: vowel mark (fatha) and zero-width non-joiner
        "Алёна",  # Cyrillic
        "देवनागरी",  # Devanagari, with combining vowel signs
        "张伟",  # CJK
        "7up",  # a decimal digit first
        "a_b.c-d",  # the allowed punctuation
        "x" * 32,  # the longest name
        "\U0001d49c" * 32,  # 32 code points outside the BMP (64 UTF-16 units, 128 bytes)
        "\u0661\u0662\u0663",  # Arabic-Indic digits (Nd) first
        "x\u200c",  # ZWNJ at the end
        "\u212bngstr\u00f6m",  # Angstrom sign: NFC turns it into U+00C5
        "e\u0301" * 32,  # 64 code points, but 32 after NFC: the rule applies after NFC
    ],
)
def test_valid_unicode_name_as_user_and_group(login, name):
    user = login(name)
    assert user.name == nfc(name)
    assert f" {nfc(name)}" in user.request("users")
    assert user.request(f"create {name}") == f"ok: created group {nfc(name)}"
    assert user.request(f"join {name}") == f"ok: joined group {nfc(name)}"


@pytest.mark.parametrize("name", ["", "   ", "x" * 33, "_alice", "al ice", "bob!", "-x",
                                  "\u200cx", "\u0301x", "a\u00a0b", "a@b", "\u00b2x",
                                  "\u216b", "x\u200d", "\U0001f600", "a\u3000b"])
def test_invalid_username_is_refused(hub, name):
    assert refused(hub, name).startswith(INVALID_NAME)
    assert hub.users == {}


@pytest.mark.parametrize("name", ["x" * 33, "_dev", "dev!", "-dev", "\u200cdev", "d/v"])
def test_invalid_group_name_is_refused(solo, name):
    assert solo.request(f"create {name}").startswith(INVALID_GROUP)
    assert solo.request(f"join {name}") == f"error: no such group: {name}"


def test_decomposed_username_is_displayed_in_nfc(login):
    emile = login("E\u0301mile")
    assert emile.name == "\u00c9mile"
    assert emile.request("users") == "users: \u00c9mile"
    assert emile.request("private \u00e9mile hi") == "[private from \u00c9mile] hi"


def test_usernames_are_case_insensitive(hub, login):
    login("Casey")
    assert refused(hub, "casey") == "error: username taken: casey"
    assert refused(hub, "CASEY") == "error: username taken: CASEY"


def test_username_taken_shows_the_name_as_typed_in_nfc(hub, login):
    login("\u00e9lodie")
    assert refused(hub, "E\u0301LODIE") == "error: username taken: \u00c9LODIE"


def test_usernames_compare_by_casefold(hub, login):
    login("Straße")
    assert refused(hub, "STRASSE") == "error: username taken: STRASSE"


def test_group_names_are_case_insensitive_and_shown_as_created(solo):
    assert solo.request("create Kanban") == "ok: created group Kanban"
    assert solo.request("create kanban") == "error: group already exists: Kanban"
    assert solo.request("join KANBAN") == "ok: joined group Kanban"
    assert solo.request("join kAnBaN") == "error: already a member of Kanban"
    assert solo.request("history KANBAN") == "ok: end of history Kanban"
    assert solo.request("leave kanban") == "ok: left group Kanban"


def test_name_arguments_are_nfc_normalised(solo):
    alice = solo
    assert alice.request("create Caf\u00e9") == "ok: created group Caf\u00e9"
    assert alice.request("join Cafe\u0301") == "ok: joined group Caf\u00e9"
    assert alice.request("create CAFE\u0301") == "error: group already exists: Caf\u00e9"
    assert alice.request("create Nai\u0308ve") == "ok: created group Na\u00efve"
    assert alice.request("join na\u00efve") == "ok: joined group Na\u00efve"


def test_deliveries_show_names_as_first_written(login):
    alice = login("Alice")
    bob = login("bob")
    alice.expect("* bob joined the group General")
    group_with("Dev", alice, bob)
    bob.send("public dEV hello\nprivate ALICE psst")
    alice.expect("[public group Dev from bob] hello", "[private from bob] psst")


# --------------------------------------------------------------------- login and notices


def test_login_joins_general_and_notifies_its_members(login):
    alice = login("alice")
    bob = login("bob")
    alice.expect("* bob joined the group General")
    carol = login("carol")
    alice.expect("* carol joined the group General")
    bob.expect("* carol joined the group General")
    quiet(alice, bob, carol)
    assert carol.request("join General") == "error: already a member of General"


def test_notice_limit_suppresses_join_notices_in_larger_groups():
    hub = make_hub(notice_limit=3)
    a = Chat(hub, "a")
    b = Chat(hub, "b")
    a.expect("* b joined the group General")
    c = Chat(hub, "c")  # General has 3 members counting c: notices sent
    a.expect("* c joined the group General")
    b.expect("* c joined the group General")
    d = Chat(hub, "d")  # 4 > 3: no notices, but d's own replies as usual
    quiet(a, b, c, d)


def test_notice_limit_counts_the_leaver():
    hub = make_hub(notice_limit=3)
    users = [Chat(hub, name) for name in "abcd"]
    for user in users:
        user.sync()
    a, b, c, d = users
    assert d.request("leave General") == "ok: left group General"  # 4 counting d
    quiet(a, b, c)
    assert c.request("leave General") == "ok: left group General"  # 3 counting c
    a.expect("* c left the group General")
    b.expect("* c left the group General")
    quiet(a, b, c, d)


def test_notice_limit_applies_to_join_command_too():
    hub = make_hub(notice_limit=2)
    a = Chat(hub, "a")
    b = Chat(hub, "b")
    a.expect("* b joined the group General")
    c = Chat(hub, "c")
    assert a.request("create Dev") == "ok: created group Dev"
    assert a.request("join Dev") == "ok: joined group Dev"
    assert b.request("join Dev") == "ok: joined group Dev"
    a.expect("* b joined the group Dev")
    assert c.request("join Dev") == "ok: joined group Dev"  # 3 > 2
    quiet(a, b, c)


def test_notice_limit_zero_always_sends():
    hub = make_hub(notice_limit=0)
    users = [Chat(hub, name) for name in "abcd"]
    for user in users:
        user.sync()
    e = Chat(hub, "e")
    for user in users:
        user.expect("* e joined the group General")
    e.send("exit")
    e.expect("ok: bye")
    for user in users:
        user.expect("* e left the group General")


# --------------------------------------------------------------------- commands


def test_create_replies_and_does_not_join_the_creator(two):
    alice, bob = two
    assert alice.request("create Dev") == "ok: created group Dev"
    assert alice.request("public Dev hi") == "error: not a member of Dev"
    assert alice.request("leave Dev") == "error: not a member of Dev"
    assert alice.request("create Dev") == "error: group already exists: Dev"
    quiet(bob)


def test_join_notifies_the_other_members_only(login):
    alice, bob, carol = login("alice"), login("bob"), login("carol")
    alice.sync()
    bob.sync()
    assert alice.request("create Dev") == "ok: created group Dev"
    assert alice.request("join Dev") == "ok: joined group Dev"
    assert bob.request("join Dev") == "ok: joined group Dev"
    alice.expect("* bob joined the group Dev")
    quiet(alice, bob, carol)


def test_leave_notifies_the_remaining_members(login):
    alice, bob, carol = login("alice"), login("bob"), login("carol")
    alice.sync()
    bob.sync()
    group_with("Dev", alice, bob)
    assert bob.request("leave Dev") == "ok: left group Dev"
    alice.expect("* bob left the group Dev")
    quiet(alice, bob, carol)
    assert bob.request("leave Dev") == "error: not a member of Dev"


def test_leaving_general_is_allowed(two, login):
    alice, bob = two
    assert alice.request("leave General") == "ok: left group General"
    bob.expect("* alice left the group General")
    assert alice.request("public General hi") == "error: not a member of General"
    assert "General" in alice.request("groups")
    login("carol")  # alice is no longer told about General logins
    bob.expect("* carol joined the group General")
    quiet(alice)
    assert alice.request("join General") == "ok: joined group General"
    bob.expect("* alice joined the group General")


def test_groups_lists_every_group_sorted_case_insensitively(login):
    alice = login("alice")
    for name in ("beta", "Alpha", "gamma", "Delta"):
        alice.request(f"create {name}")
    assert alice.request("groups") == "groups: Alpha beta Delta gamma General"


def test_users_lists_every_user_sorted_case_insensitively(login):
    for name in ("bob", "Alice", "dave", "Carol"):
        user = login(name)
    assert user.request("users") == "users: Alice bob Carol dave"


def test_public_reaches_every_member_but_the_sender(login):
    alice, bob, carol, dave = (login(name) for name in ("alice", "bob", "carol", "dave"))
    for user in (alice, bob, carol):
        user.sync()
    group_with("Dev", alice, bob, carol)
    alice.send("public Dev hello all")
    bob.expect("[public group Dev from alice] hello all")
    carol.expect("[public group Dev from alice] hello all")
    quiet(alice, bob, carol, dave)


def test_public_message_text_is_kept_verbatim(two):
    alice, bob = two
    alice.send("public General  \t two  inner\tspaces and trailing \t ")
    bob.expect("[public group General from alice] two  inner\tspaces and trailing \t ")
    alice.send("public\tGeneral\t\tx:  [y] * z\\n ")
    bob.expect("[public group General from alice] x:  [y] * z\\n ")


def test_private_reaches_only_the_target(login):
    alice, bob, carol = login("alice"), login("bob"), login("carol")
    alice.sync()
    bob.sync()
    alice.send("private bob  secret  text ")
    bob.expect("[private from alice] secret  text ")
    quiet(alice, bob, carol)


def test_private_to_self(login):
    alice = login("alice")
    assert alice.request("private alice note to self") == "[private from alice] note to self"
    assert alice.request("private ALICE again") == "[private from alice] again"


def test_exit_says_bye_and_notifies_every_group(login):
    alice, bob = login("alice"), login("bob")
    alice.sync()
    group_with("Dev", alice, bob)
    group_with("Ops", bob, alice)
    alice.send("exit")
    alice.expect("ok: bye")
    got = {bob.read_line() for _ in range(3)}
    assert got == {f"* alice left the group {g}" for g in ("General", "Dev", "Ops")}
    quiet(bob)
    assert bob.request("private alice hi") == "error: no such user: alice"
    assert login("ALICE").name == "ALICE"  # the name is free at once


def test_help_lists_the_command_table(solo):
    assert solo.request("help") == HELP


def test_ping(solo):
    assert solo.request("ping") == PONG


def test_command_words_are_case_insensitive(solo):
    alice = solo
    assert alice.request("USERS") == "users: solo"
    assert alice.request("Groups") == "groups: General"
    assert alice.request("PiNg") == PONG
    assert alice.request("HELP") == HELP
    assert alice.request("CREATE Dev") == "ok: created group Dev"
    assert alice.request("JOIN Dev") == "ok: joined group Dev"
    assert alice.request("PRIVATE solo x") == "[private from solo] x"
    assert alice.request("History Dev") == "ok: end of history Dev"
    assert alice.request("LEAVE Dev") == "ok: left group Dev"
    alice.send("EXIT")
    alice.expect("ok: bye")
    assert alice.gone


def test_only_space_and_tab_separate_arguments(solo):
    assert solo.request("ping\u00a0") == "error: unknown command: ping\u00a0"
    assert solo.request("join\u3000General") == "error: unknown command: join\u3000General"
    assert solo.request("create a\u00a0b").startswith(INVALID_GROUP)
    assert solo.request("history General\u00a05") == "error: no such group: General\u00a05"


def test_extra_spaces_and_tabs_around_arguments(two):
    alice, bob = two
    assert alice.request("  \tcreate \t Dev \t ") == "ok: created group Dev"
    assert alice.request("\tjoin\t\tDev  ") == "ok: joined group Dev"
    assert alice.request(" groups\t") == "groups: Dev General"
    assert alice.request("\t users  ") == "users: alice bob"
    assert alice.request("  ping \t") == PONG
    alice.send(" \t public \t General \t hi")
    bob.expect("[public group General from alice] hi")
    assert alice.request("history \t Dev \t 5 \t") == "ok: end of history Dev"


@pytest.mark.parametrize("blank", ["", "   ", "\t", " \t \t"])
def test_blank_line_gets_no_reply_and_is_not_counted(hub, solo, blank):
    before = dict(hub.stats.commands)
    solo.send(blank)
    quiet(solo)
    assert hub.stats.commands == before


# --------------------------------------------------------------------- history


HISTORY_LINE = re.compile(
    r"\[history group (\S+) at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) from (\S+)\] (.*)"
)


def history(chat: Chat, *args: str) -> list[str]:
    """The texts a `history` command returns, after checking its framing."""
    group = args[0]
    chat.send(" ".join(["history", *args]))
    got = chat.read_until(lambda line: not line.startswith("[history group "))
    assert got[-1] == f"ok: end of history {group}", got[-1]
    texts = []
    for line in got[:-1]:
        match = HISTORY_LINE.fullmatch(line)
        assert match, line
        texts.append(match.group(4))
    return texts


def test_history_line_format_with_the_hub_clock(hub, two):
    alice, bob = two
    hub.clock.now = 1_700_000_000.75  # 2023-11-14T22:13:20.75Z: seconds, rounded down
    alice.send("public General first  message ")
    bob.expect("[public group General from alice] first  message ")
    assert bob.request("history general") == (
        "[history group General at 2023-11-14T22:13:20Z from alice] first  message ")
    bob.expect("ok: end of history General")


def test_history_default_is_the_last_20_oldest_first(solo):
    solo.send(publics("General", (f"m{i}" for i in range(1, 26))))
    assert history(solo, "General") == [f"m{i}" for i in range(6, 26)]


def test_history_explicit_count(solo):
    solo.send(publics("General", (f"m{i}" for i in range(1, 11))))
    assert history(solo, "General", "3") == ["m8", "m9", "m10"]
    assert history(solo, "General", "05") == ["m6", "m7", "m8", "m9", "m10"]
    assert history(solo, "General", "200") == [f"m{i}" for i in range(1, 11)]


def test_history_count_at_most_200(solo):
    solo.send(publics("General", (f"m{i}" for i in range(1, 211))))
    assert history(solo, "General", "200") == [f"m{i}" for i in range(11, 211)]
    assert solo.request("history General 201") == "error: invalid count: 201"


def test_history_count_with_leading_zeros(solo):
    solo.send(publics("General", ["a", "b", "c"]))
    assert history(solo, "General", "0002") == ["b", "c"]
    assert history(solo, "General", "00200") == ["a", "b", "c"]


def test_history_of_an_empty_group(solo):
    solo.request("create Dev")
    solo.request("join Dev")
    assert solo.request("history dev") == "ok: end of history Dev"


def test_history_holds_only_public_messages_of_that_group(two):
    alice, bob = two
    group_with("Dev", alice, bob)
    assert alice.request("create Ops") == "ok: created group Ops"
    assert alice.request("join Ops") == "ok: joined group Ops"
    bob.send("public Dev one\nprivate alice secret\npublic General elsewhere")
    alice.expect("[public group Dev from bob] one", "[private from bob] secret",
                 "[public group General from bob] elsewhere")
    assert replies(alice, "public Ops other", "public Dev bad\x01", "public Dev two") == [CONTROL]
    bob.expect("[public group Dev from alice] two")
    assert bob.request("leave Dev") == "ok: left group Dev"
    alice.expect("* bob left the group Dev")
    assert history(alice, "Dev") == ["one", "two"]
    assert history(alice, "Ops") == ["other"]


def test_history_disabled():
    alice = Chat(make_hub(history=0), "alice")
    alice.send("public General hi")
    assert alice.request("history General") == "error: history is disabled"
    assert alice.request("history nosuch 0") == "error: history is disabled"


def test_history_ring_is_bounded_by_the_history_option():
    alice = Chat(make_hub(history=5), "alice")
    alice.send(publics("General", (f"m{i}" for i in range(1, 9))))
    assert history(alice, "General") == ["m4", "m5", "m6", "m7", "m8"]
    assert history(alice, "General", "200") == ["m4", "m5", "m6", "m7", "m8"]


# --------------------------------------------------------------------- errors


def test_unknown_command_word_as_typed(hub, solo):
    alice = solo
    assert alice.request("FooBar") == "error: unknown command: FooBar"
    assert alice.request("  \tFooBar baz qux") == "error: unknown command: FooBar"
    assert alice.request("p\u00efng") == "error: unknown command: p\u00efng"
    assert alice.request("/join Dev") == "error: unknown command: /join"
    assert hub.stats.commands["unknown"] == 4


@pytest.mark.parametrize(
    "line, synopsis",
    [
        ("create", "create <group>"),
        ("create a b", "create <group>"),
        ("join", "join <group>"),
        ("join General extra", "join <group>"),
        ("leave", "leave <group>"),
        ("leave General extra", "leave <group>"),
        ("groups all", "groups"),
        ("users all", "users"),
        ("public", "public <group> <message>"),
        ("public General", "public <group> <message>"),
        ("public General    ", "public <group> <message>"),
        ("public General \t ", "public <group> <message>"),
        ("private", "private <user> <message>"),
        ("private alice", "private <user> <message>"),
        ("private alice   ", "private <user> <message>"),
        ("exit now", "exit"),
        ("history", "history <group> [count]"),
        ("history General 5 6", "history <group> [count]"),
        ("help me", "help"),
        ("ping pong", "ping"),
        ("PING pong", "ping"),
    ],
)
def test_wrong_argument_count_gets_usage(hub, solo, line, synopsis):
    assert solo.request(line) == f"error: usage: {synopsis}"
    quiet(solo)
    assert hub.stats.commands[synopsis.split()[0]] == 1  # counted under its word


def test_usage_error_comes_before_the_other_errors(solo):
    alice = solo
    assert alice.request("join nosuch extra") == "error: usage: join <group>"
    assert alice.request("public nosuch") == "error: usage: public <group> <message>"
    assert alice.request("private nobody") == "error: usage: private <user> <message>"
    assert alice.request("history nosuch 1 2") == "error: usage: history <group> [count]"
    assert alice.request("create _bad extra") == "error: usage: create <group>"


def test_exit_with_an_argument_does_not_exit(solo):
    assert solo.request("exit now") == "error: usage: exit"
    assert not solo.gone
    quiet(solo)


def test_no_such_group(solo):
    alice = solo
    assert alice.request("join NoSuch") == "error: no such group: NoSuch"
    assert alice.request("leave NoSuch") == "error: no such group: NoSuch"
    assert alice.request("public NoSuch hi") == "error: no such group: NoSuch"
    assert alice.request("history NoSuch") == "error: no such group: NoSuch"


def test_not_a_member(solo):
    alice = solo
    assert alice.request("create Outside") == "ok: created group Outside"
    assert alice.request("leave outside") == "error: not a member of Outside"
    assert alice.request("public OUTSIDE hi") == "error: not a member of Outside"
    assert alice.request("history oUTSIDE") == "error: not a member of Outside"


def test_no_such_user(solo):
    assert solo.request("private nobody hi") == "error: no such user: nobody"


CONTROLS = ["\x00", "\x01", "\x07", "\x1b", "\x1f", "\r", "\x0b", "\x0c", "\x7f", "\x80",
            "\x85", "\x9f",
            # v2 "Look-alike names and invisible text": line/paragraph separators and
            # the bidi embeddings, overrides and isolates count as control characters.
            "\u2028", "\u2029", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",
            "\u2066", "\u2067", "\u2068", "\u2069"]


@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
def test_control_characters_are_refused_in_public(pair, char):
    alice, bob, group = pair
    assert alice.request(f"public {group} a{char}b") == CONTROL
    assert alice.request(f"public {group} {char}x") == CONTROL
    quiet(bob)


@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
def test_control_characters_are_refused_in_private(pair, char):
    alice, bob, _ = pair
    assert alice.request(f"private {bob.name} a{char}b") == CONTROL
    assert alice.request(f"private {alice.name} {char}x") == CONTROL
    quiet(bob)


def test_tab_and_other_non_control_characters_are_allowed_in_messages(pair):
    alice, bob, group = pair
    text = ("tab\there \u00a0nbsp \u200b zwsp \u200c zwnj \u200d zwj \u200e lrm "
            "emoji \U0001f469\u200d\U0001f4bb \u00a0")
    alice.send(f"public {group} {text}\nprivate {bob.name} {text}")
    bob.expect(f"[public group {group} from {alice.name}] {text}",
               f"[private from {alice.name}] {text}")


def test_errors_in_table_order_public(solo):
    assert solo.request("create Aside") == "ok: created group Aside"
    assert solo.request("public nosuch msg\x01") == "error: no such group: nosuch"
    assert solo.request("public Aside \x01") == "error: not a member of Aside"


def test_errors_in_table_order_private(solo):
    assert solo.request("private nobody \x01") == "error: no such user: nobody"


def test_errors_in_table_order_history(solo):
    assert solo.request("create Beside") == "ok: created group Beside"
    assert solo.request("history nosuch abc") == "error: no such group: nosuch"
    assert solo.request("history Beside abc") == "error: not a member of Beside"
    assert solo.request("history Beside 0") == "error: not a member of Beside"


def test_errors_in_table_order_join_and_create(solo):
    assert solo.request("create General") == "error: group already exists: General"
    assert solo.request("join general") == "error: already a member of General"


@pytest.mark.parametrize("count", ["0", "201", "+5", "-1", "\u0665", "\uff15", "abc", "5x",
                                   "1e2", "00", "99999999999999999999999"])
def test_history_invalid_count(solo, count):
    assert solo.request(f"history General {count}") == f"error: invalid count: {count}"

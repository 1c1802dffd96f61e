"""PROTOCOL.md v2 "Look-alike names and invisible text", over real TCP."""

from __future__ import annotations

import pytest

ALICES = [
    "\u0430lice",  # Cyrillic a
    "alice\u200c",  # ZWNJ
    "alice\u034f",  # combining grapheme joiner
    "alice\ufe0f",  # variation selector 16
    "\uff41\uff4c\uff49\uff43\uff45",  # fullwidth
    "\U0001d41a\U0001d425\U0001d422\U0001d41c\U0001d41e",  # mathematical bold
]


def test_every_look_alike_of_a_logged_in_user_is_taken(server, login, connect):
    alice = login(server, "alice")
    client = connect(server)
    client.expect("enter a username:")
    for name in ALICES:
        assert client.request(name) == f"error: username taken: {name}"
        client.expect("enter a username:")
    client.send("alicia")
    client.expect("connected! welcome alicia", "you joined the group General")
    assert client.request("users") == "users: alice alicia"
    alice.expect("* alicia joined the group General")


def test_the_look_alike_is_free_again_once_the_first_leaves(server, login, connect):
    alice = login(server, "alice")
    assert alice.request("exit") == "ok: bye"
    login(server, "\u0430lice")


def test_a_name_of_hangul_fillers_is_invalid(server, connect):
    client = connect(server)
    client.expect("enter a username:")
    assert client.request("\u3164\u3164") == "error: invalid username: only invisible characters"
    client.expect("enter a username:")


@pytest.mark.parametrize("name", ["D\u0435v", "dev\u200c", "\uff44\uff45\uff56"])
def test_a_look_alike_group_already_exists(server, login, name):
    alice = login(server, "alice")
    assert alice.request("create Dev") == "ok: created group Dev"
    assert alice.request(f"create {name}") == "error: group already exists: Dev"
    assert alice.request("groups") == "groups: Dev General"


def test_general_has_no_look_alike(server, login):
    alice = login(server, "alice")
    assert alice.request("create G\u0435neral") == "error: group already exists: General"
